"""`Optimizer.minimize(loss)` inside a graph (TensorFlow 1): the update operation to run.

The gradients of the loss with respect to the variables' read nodes are graph tensors (deferred
ones when the loss has unknown shapes). Running the update operation computes them with the
variables' values as the run starts, then takes one optimizer step:

- plain gradient descent is an assignment per variable, `v <- v - lr * g`, compiled into the
  same program as the gradients (the learning rate is the one at `minimize` time, as in
  TensorFlow 1's `GradientDescentOptimizer`);
- any other optimizer (Adam, RMSprop, momentum, clipping, schedules) keeps its state per
  variable (its slots) and applies its optax update eagerly with the gradients' values
  (`apply_gradients`), so the step is exactly the eager step.
"""

from __future__ import annotations

from typing import Any

from adplugin._errors import message
from adplugin.eager.variable import Variable
from adplugin.ir.deferred import Reach
from adplugin.ir.graph import FORWARD, Graph, Tensor
from adplugin.ir.variables import GraphOp, assign_node, read_node
from adplugin.transforms.reverse import gradients


def variables_of(loss: Any) -> list[Variable]:
    """The trainable variables `loss` reads."""
    return [v for v in Reach([loss]).variables.values() if v.trainable]


def _in_graph_sgd(optimizer: Any) -> bool:
    """Whether the step is `v - lr * g` with a constant learning rate (optimizers that say so:
    TensorFlow 1's GradientDescentOptimizer in `adplugin.compat.v1`)."""
    return bool(getattr(optimizer, "in_graph_sgd", False))


def minimize_in_graph(optimizer: Any, loss: Any, var_list: list[Variable] | None = None
                      ) -> GraphOp:
    """The operation that, run, takes one optimizer step on `loss` (a graph tensor)."""
    graph: Graph = loss.graph
    variables = list(var_list) if var_list is not None else variables_of(loss)
    if not variables:
        raise ValueError(message("Optimizer.minimize", "no variables to optimize",
                                 f"a loss {loss!r} that reads no trainable variable",
                                 "a loss computed from ap.Variables",
                                 "build the loss from variables, or pass var_list"))
    for v in variables:
        if not isinstance(v, Variable):
            raise TypeError(message("Optimizer.minimize", "var_list holds a non-variable",
                                    type(v).__name__, "ap.Variable", "pass the variables"))
    with graph.building(role=FORWARD):
        reads = [read_node(graph, v) for v in variables]
    grads = gradients(loss, reads)
    pairs = [(g, v, r) for g, v, r in zip(grads, variables, reads) if g is not None]
    if not pairs:
        raise ValueError(message("Optimizer.minimize", "no gradient for any variable",
                                 [v.name for v in variables], "a loss that depends on them",
                                 "check that the loss is computed from these variables"))
    if _in_graph_sgd(optimizer):
        return _sgd_update(optimizer, graph, pairs)
    return _eager_update(optimizer, graph, pairs)


def _sgd_update(optimizer: Any, graph: Graph, pairs: list[tuple[Any, Variable, Tensor]]
                ) -> GraphOp:
    from adplugin.primitives.elementwise import multiply, subtract

    lr = float(optimizer.learning_rate)
    with graph.building(role=FORWARD):
        assigns = [assign_node(graph, v, subtract(r, multiply(lr, g))) for g, v, r in pairs]

    def count(_: list[Any]) -> None:  # one step taken, as apply_gradients counts
        counter = optimizer._iterations
        counter._write(counter._stored + 1)

    return GraphOp(graph, assigns, count, name="minimize")


def _eager_update(optimizer: Any, graph: Graph, pairs: list[tuple[Any, Variable, Tensor]]
                  ) -> GraphOp:
    variables = [v for _, v, _ in pairs]

    def step(grads: list[Any]) -> None:
        optimizer.apply_gradients(zip(grads, variables))

    return GraphOp(graph, [g for g, _, _ in pairs], step, name="minimize")

