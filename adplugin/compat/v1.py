"""TensorFlow 1's API over adplugin: `import adplugin.compat.v1 as tf`.

TensorFlow 1 builds a graph first and runs it in a `Session`:

    X = tf.placeholder("float")                      # unknown shape: specialized per feed
    W = tf.Variable(0.5, name="weight")
    cost = tf.reduce_sum(tf.pow(tf.multiply(X, W) - 1.0, 2))
    step = tf.train.GradientDescentOptimizer(0.01).minimize(cost)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(step, feed_dict={X: 2.0})

Ops build in the default graph, one per thread (and per asyncio task), or in the graph of a
`with g.as_default():` block; adplugin itself keeps no hidden default graph. Variables hold
their value from creation, so `global_variables_initializer()` is an operation that does
nothing; reads in a run see the values from before the run's assignments.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np

from adplugin import _context
from adplugin import optimizers as _optimizers
from adplugin._errors import message
from adplugin.eager.variable import Variable
from adplugin.ir.deferred import DeferredTensor
from adplugin.ir.graph import FORWARD, GraphError, Tensor
from adplugin.ir.graph import Graph as _Graph
from adplugin.ir.variables import GraphOp, group
from adplugin.primitives import conversion, elementwise, linalg, logic, reductions, shape
from adplugin.transforms.reverse import gradients as _gradients

__all__ = [
    "Graph", "Session", "InteractiveSession", "Variable", "Tensor", "Operation", "placeholder",
    "constant", "get_default_graph", "reset_default_graph", "global_variables_initializer",
    "initialize_all_variables", "gradients", "group", "assign", "assign_add", "assign_sub",
    "train", "float16", "float32", "float64", "int32", "int64", "bool",
]

float16, float32, float64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
int32, int64 = np.dtype(np.int32), np.dtype(np.int64)
Operation = GraphOp

_DTYPE_NAMES = {"float": np.float32, "double": np.float64, "half": np.float16}


def as_dtype(dtype: Any) -> np.dtype:
    """A NumPy dtype from TensorFlow's spellings ("float" is float32, "double" float64)."""
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return np.dtype(_DTYPE_NAMES[dtype])
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(message("placeholder", "not a dtype", repr(dtype),
                                "a dtype or its name (\"float\", \"float32\", np.float32)",
                                "pass e.g. tf.float32 or \"float\"")) from None


# ----------------------------------------------------------------------------------------------
# Graphs: a default graph per thread and task
# ----------------------------------------------------------------------------------------------

class Graph(_Graph):
    """TensorFlow 1's `tf.Graph`: `with g.as_default():` builds in it."""

    @contextmanager
    def as_default(self) -> Iterator[Graph]:
        with self:
            yield self


_default: contextvars.ContextVar[_Graph | None] = contextvars.ContextVar(
    "adplugin_compat_v1_default_graph", default=None)


def get_default_graph() -> _Graph:
    """The graph of the innermost `with g.as_default():` (or `with ap.Graph():`) block, else
    this thread's (or task's) default graph, made on first use."""
    scope = _context.current()
    if scope is not None and scope.graph is not None:
        return scope.graph  # type: ignore[no-any-return]
    graph = _default.get()
    if graph is None:
        graph = Graph("default")
        _default.set(graph)
    return graph


def reset_default_graph() -> None:
    """Start a new default graph for this thread (or task)."""
    scope = _context.current()
    if scope is not None and scope.graph is not None:
        raise AssertionError("Do not use tf.reset_default_graph() to clear nested graphs. "
                             "Leave the `with g.as_default():` block first.")
    _default.set(Graph("default"))


def _in_default_graph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (an `ap.*` op) building in the default graph; TensorFlow's `name=` is accepted."""

    @functools.wraps(fn)
    def op(*args: Any, name: str | None = None, **kwargs: Any) -> Any:
        with get_default_graph().building(role=FORWARD):
            return fn(*args, **kwargs)

    return op


def placeholder(dtype: Any, shape: Sequence[int | None] | None = None,
                name: str | None = None) -> Any:
    """A graph input fed by `Session.run(..., feed_dict={placeholder: value})`. An unknown
    shape (None) or dimension (None in `shape`) is specialized per fed shape."""
    return get_default_graph().placeholder(shape, as_dtype(dtype), name)


def constant(value: Any, dtype: Any = None, shape: Sequence[int] | None = None,
             name: str | None = None) -> Tensor:
    """A constant of the default graph (`shape` broadcasts a scalar, as TensorFlow does)."""
    array = np.asarray(value, None if dtype is None else as_dtype(dtype))
    if shape is not None:
        array = np.broadcast_to(array, tuple(shape)).copy()
    graph = get_default_graph()
    return graph.constant(array if dtype is not None or array.ndim or shape is not None
                          else value, name=name)


def global_variables_initializer() -> GraphOp:
    """An operation that initializes the variables: adplugin's hold their initial value from
    creation, so running it does nothing."""
    return GraphOp(None, name="init")


initialize_all_variables = global_variables_initializer


def gradients(ys: Any, xs: Any, grad_ys: Any = None, name: str | None = None,
              unconnected_gradients: Any = "none", **ignored: Any) -> list[Any]:
    """d(sum ys)/dx for each x: a list, None where x does not reach ys (tf.gradients)."""
    with get_default_graph().building(role=FORWARD):
        return _gradients(ys, xs, grad_ys, unconnected_gradients)


def assign(ref: Variable, value: Any, name: str | None = None, **ignored: Any) -> Any:
    """The assignment of `value` to `ref`, applied when a run fetches it."""
    from adplugin.ir.variables import assign_node

    graph = _graph_of(value) or get_default_graph()
    with graph.building(role=FORWARD):
        return assign_node(graph, ref, value)


def assign_add(ref: Variable, value: Any, name: str | None = None, **ignored: Any) -> Any:
    return assign(ref, add(ref, value))


def assign_sub(ref: Variable, value: Any, name: str | None = None, **ignored: Any) -> Any:
    return assign(ref, subtract(ref, value))


def _graph_of(x: Any) -> _Graph | None:
    for leaf in jax.tree.leaves(x, is_leaf=_is_graph_value):
        graph = getattr(leaf, "graph", None) if _is_graph_value(leaf) else None
        if graph is not None:
            return graph  # type: ignore[no-any-return]
    return None


def _is_graph_value(x: Any) -> bool:
    return isinstance(x, (Tensor, DeferredTensor, GraphOp, Variable))


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------

add = _in_default_graph(elementwise.add)
subtract = _in_default_graph(elementwise.subtract)
multiply = _in_default_graph(elementwise.multiply)
divide = _in_default_graph(elementwise.divide)
truediv = divide
negative = _in_default_graph(elementwise.negative)
pow = _in_default_graph(elementwise.power)  # noqa: A001
square = _in_default_graph(elementwise.square)
sqrt = _in_default_graph(elementwise.sqrt)
exp = _in_default_graph(elementwise.exp)
log = _in_default_graph(elementwise.log)
sin = _in_default_graph(elementwise.sin)
cos = _in_default_graph(elementwise.cos)
tanh = _in_default_graph(elementwise.tanh)
sigmoid = _in_default_graph(elementwise.sigmoid)
abs = _in_default_graph(elementwise.abs)  # noqa: A001
maximum = _in_default_graph(elementwise.maximum)
minimum = _in_default_graph(elementwise.minimum)
matmul = _in_default_graph(linalg.matmul)
where = _in_default_graph(logic.where)
equal = _in_default_graph(logic.equal)
less = _in_default_graph(logic.less)
greater = _in_default_graph(logic.greater)
reshape = _in_default_graph(shape.reshape)
transpose = _in_default_graph(shape.transpose)
stop_gradient = _in_default_graph(conversion.stop_gradient)
identity = _in_default_graph(lambda x: elementwise.add(x, 0))


def _reduction(fn: Callable[..., Any]) -> Callable[..., Any]:
    def reduce(input_tensor: Any, axis: Any = None, keepdims: bool = False,
               name: str | None = None, reduction_indices: Any = None,
               keep_dims: bool | None = None) -> Any:
        axis = reduction_indices if axis is None else axis
        keep = keepdims if keep_dims is None else keep_dims
        with get_default_graph().building(role=FORWARD):
            return fn(input_tensor, axis=axis, keepdims=keep)

    reduce.__name__ = reduce.__qualname__ = f"reduce_{fn.__name__}"
    return reduce


reduce_sum = _reduction(reductions.sum)
reduce_mean = _reduction(reductions.mean)
reduce_max = _reduction(reductions.max)
reduce_logsumexp = _reduction(reductions.logsumexp)


def cast(x: Any, dtype: Any, name: str | None = None) -> Any:
    with get_default_graph().building(role=FORWARD):
        return conversion.astype(x, as_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# Sessions
# ----------------------------------------------------------------------------------------------

class Session:
    """Runs graphs: `run(fetches, feed_dict)` gives NumPy values (None for operations).

    `Session(graph=None)` runs the graph of its fetches (the default graph when they have
    none)."""

    def __init__(self, target: str = "", graph: _Graph | None = None, config: Any = None):
        self.graph = graph
        self._closed = False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    def run(self, fetches: Any, feed_dict: dict[Any, Any] | None = None,
            options: Any = None, run_metadata: Any = None) -> Any:
        if self._closed:
            raise RuntimeError("Attempted to use a closed Session.")
        graph = self.graph or _graph_of(fetches) or get_default_graph()
        out = graph.run(fetches, dict(feed_dict or {}))
        return jax.tree.map(_numpy, out)


class InteractiveSession(Session):
    """A session for interactive use (the same as `Session` here)."""


def _numpy(x: Any) -> Any:
    array = np.asarray(x)
    return array[()] if array.ndim == 0 else array


# ----------------------------------------------------------------------------------------------
# tf.train
# ----------------------------------------------------------------------------------------------

class _GraphMinimize:
    """TensorFlow 1's `minimize(loss)`: the update operation when `loss` is a graph value."""

    def minimize(self, loss: Any, global_step: Variable | None = None,
                 var_list: list[Variable] | None = None, **ignored: Any) -> Any:
        update = super().minimize(loss, var_list)  # type: ignore[misc]
        if global_step is None or not isinstance(update, GraphOp):
            return update
        return group(update, GraphOp(None, (), _incrementer(global_step)))

    def compute_gradients(self, loss: Any, var_list: list[Variable] | None = None,
                          **ignored: Any) -> list[tuple[Any, Variable]]:
        from adplugin.ir.training import variables_of

        variables = list(var_list) if var_list is not None else variables_of(loss)
        return list(zip(gradients(loss, variables), variables))

    def apply_gradients(self, grads_and_vars: Any, global_step: Variable | None = None,
                        name: str | None = None) -> Any:
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not any(isinstance(g, (Tensor, DeferredTensor)) for g, _ in pairs):
            return super().apply_gradients(pairs)  # type: ignore[misc]
        step = super().apply_gradients  # type: ignore[misc]
        variables = [v for _, v in pairs]
        ops = [GraphOp(_graph_of([g for g, _ in pairs]), [g for g, _ in pairs],
                       lambda values: step(zip(values, variables)))]
        if global_step is not None:
            ops.append(GraphOp(None, (), _incrementer(global_step)))
        return group(*ops)


def _incrementer(v: Variable) -> Callable[[list[Any]], None]:
    return lambda _: v.assign(v.value + 1)


class GradientDescentOptimizer(_GraphMinimize, _optimizers.SGD):  # type: ignore[misc]
    """v <- v - learning_rate * dloss/dv (in a graph: assignments in the run's program)."""

    in_graph_sgd = True

    def __init__(self, learning_rate: float, use_locking: bool = False,
                 name: str = "GradientDescent"):
        super().__init__(learning_rate=learning_rate)


class AdamOptimizer(_GraphMinimize, _optimizers.Adam):  # type: ignore[misc]
    """Adam with TensorFlow 1's defaults (epsilon 1e-8)."""

    def __init__(self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, use_locking: bool = False, name: str = "Adam"):
        super().__init__(learning_rate=learning_rate, beta_1=beta1, beta_2=beta2,
                         epsilon=epsilon)


train = SimpleNamespace(GradientDescentOptimizer=GradientDescentOptimizer,
                        AdamOptimizer=AdamOptimizer, Optimizer=_optimizers.Optimizer)

errors = SimpleNamespace(InvalidArgumentError=GraphError)
globals()["bool"] = np.dtype(np.bool_)  # tf.bool (set here: `bool` stays the builtin above)
