"""`ap.trace(fn, *example_args)`: a JAX function as an adplugin operation graph.

`jax.make_jaxpr` records the function; its jaxpr is then legalized into adplugin primitives
(`frontends.interpret`) through a conversion table (`frontends.lax_rules.RULES`: lax
primitive name -> rule), as MLIR's dialect conversion does. Equations that already bind
adplugin primitives (a function written with `ap.*` ops) map one to one; calls (`jit`,
`pjit`, `remat`, ...) are inlined; custom_jvp/custom_vjp functions and control flow (`cond`,
`scan`, `while`) become region nodes that keep their derivative rules
(`frontends.regions`), so `ap.gradients` on the graph gives jax.grad's answers. A primitive
without a rule is an error listing every such primitive.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from adplugin import _jax_adapter as jx
from adplugin._errors import message
from adplugin.frontends.interpret import Converter, TraceError
from adplugin.frontends.lax_rules import CALLS, ELEMENTWISE, RULES
from adplugin.frontends.regions import REGIONS
from adplugin.ir.graph import FORWARD, Graph, GraphError, Tensor

__all__ = ["CALLS", "ELEMENTWISE", "RULES", "TraceError", "TracedFunction",
           "supported_primitives", "trace"]


def supported_primitives() -> list[str]:
    """Names of the JAX primitives `ap.trace` converts (besides adplugin's own primitives)."""
    return sorted({*RULES, *CALLS, *REGIONS})


# ----------------------------------------------------------------------------------------------
# trace
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TracedFunction:
    """A traced function: its graph, one placeholder per flattened array argument, and the
    output tensors (flattened; `out_tree` holds the structure). Calling it runs the graph."""

    name: str
    graph: Graph
    inputs: list[Tensor]
    outputs: list[Tensor]
    in_tree: Any
    out_tree: Any

    def unflatten(self, values: Sequence[Any]) -> Any:
        """The output pytree holding `values` (one per output tensor)."""
        return jax.tree.unflatten(self.out_tree, list(values))

    def __call__(self, *args: Any) -> Any:
        flat, tree = jax.tree.flatten(args)
        if tree != self.in_tree:
            raise GraphError(message(
                f"trace({self.name})", "arguments structured unlike the example arguments",
                str(tree), str(self.in_tree), "pass arguments of the traced structure (or "
                "trace the function again with the new structure)"))
        if not self.outputs:
            return self.unflatten([])
        return self.unflatten(self.graph.run(self.outputs, dict(zip(self.inputs, flat))))


def _function_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _argument_names(fn: Callable[..., Any], args: Sequence[Any]) -> list[str]:
    """One name per array leaf, from the parameter names and the paths in the pytrees."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), None)
    names: list[str] = []
    for i, arg in enumerate(args):
        if i < len(positional):
            base = positional[i]
        elif star is not None:
            base = f"{star}[{i - len(positional)}]"
        else:
            base = f"arg{i}"
        leaves, _ = jax.tree_util.tree_flatten_with_path(arg)
        names.extend(base + jax.tree_util.keystr(path) for path, _ in leaves)
    return names


def _trace_error(name: str, conv: Converter) -> TraceError:
    given = [f"{p} ({n} equation{'s' if n > 1 else ''})" for p, n in sorted(conv.no_rule.items())]
    given += [f"{p} (could not convert: {why})" for p, why in sorted(conv.failed.items())]
    return TraceError(message(
        f"trace({name})", "the function uses JAX primitives that adplugin cannot convert",
        ", ".join(given), "adplugin primitives (ap.* ops) or JAX primitives with a conversion "
        "rule (adplugin.frontends.trace.supported_primitives())",
        "write those parts with ap.* ops, or define an adplugin primitive for them with "
        "ap.define_primitive(...) and bind it (its equations convert one to one)"))


def trace(fn: Callable[..., Any], *example_args: Any) -> TracedFunction:
    """Trace `fn` at `example_args` (pytrees of arrays) into an adplugin operation graph.

    The function may use `jax.numpy`, `jax.nn`, `lax` and `ap.*` ops; its jaxpr is legalized
    into adplugin primitives. Returns a `TracedFunction` with `.graph`, `.inputs` (one
    placeholder per flattened array argument, named like `x` or `params[0]`), `.outputs`
    (flattened; `.unflatten` rebuilds the output pytree) and `__call__`, which runs the graph.
    Differentiate with `ap.gradients(traced.outputs[0], traced.inputs)`.
    """
    name = _function_name(fn)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    jaxpr, consts = jx.jaxpr_and_consts(closed)
    graph = Graph(f"trace_{re.sub(r'[^0-9A-Za-z_]', '_', name)}")
    names = _argument_names(fn, example_args)
    if len(names) != len(jaxpr.invars):
        names = [f"in{i}" for i in range(len(jaxpr.invars))]
    inputs = [graph.placeholder(v.aval.shape, v.aval.dtype, n)
              for v, n in zip(jaxpr.invars, names)]
    conv = Converter(graph)
    with graph.building(role=FORWARD):
        outputs = conv.run(jaxpr, consts, inputs)
    if conv.no_rule or conv.failed:
        raise _trace_error(name, conv)
    graph.verify()
    return TracedFunction(name, graph, inputs, outputs, jax.tree.structure(example_args),
                          jax.tree.structure(out_shape))
