"""Evaluating a jaxpr with adplugin primitives: the core of `ap.trace`.

`Converter.run` walks a jaxpr's live equations (dead ones are skipped) and applies to each
the adplugin primitive it binds, its conversion rule (`lax_rules.RULES`), the body of a call
(inlined), or a region node (`regions`: custom_jvp/custom_vjp functions and control flow,
kept whole with their derivative rules). Every step goes through `Primitive.bind`, so the
operands decide what happens: graph tensors add nodes, JAX values compute (or trace), linear
stand-ins are recorded for transposition.

With a graph (`ap.trace`) literals become shared constants of the graph and equations that
cannot be converted are collected, so one error lists them all. Without one (a region's
derivative rule at work) an equation that cannot be converted raises at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import AdpluginError, message
from adplugin._primitive import Primitive, get_primitive, list_primitives
from adplugin.frontends.lax_rules import CALLS, ELEMENTWISE, RULES, Unsupported
from adplugin.ir.graph import Graph, Tensor

MISSING = object()  # stands for the outputs of an equation that could not be converted


class TraceError(AdpluginError, NotImplementedError):
    """A traced function uses JAX primitives that have no conversion to adplugin primitives."""


_by_jax: dict[int, Primitive] = {}  # id(JAX primitive) -> adplugin primitive (registry view)


def adplugin_primitive(jax_primitive: Any) -> Primitive | None:
    """The adplugin primitive registered as `jax_primitive`, if it is one of adplugin's."""
    if len(_by_jax) != len(list_primitives()):  # primitives are only ever added
        for registered in map(get_primitive, list_primitives()):
            _by_jax[id(registered.jax_primitive)] = registered
    found = _by_jax.get(id(jax_primitive))
    return found if found is not None and found.jax_primitive is jax_primitive else None


def live_equations(jaxpr: Any, needed: Sequence[bool] | None) -> list[list[bool] | None]:
    """Per equation: which of its outputs are used (None: the equation is dead), given which
    of the jaxpr's outputs are needed (all when None). Effectful equations stay live."""
    outs = jaxpr.outvars
    flags = [True] * len(outs) if needed is None else list(needed)
    want = {v for v, n in zip(outs, flags) if n and not jx.is_literal(v)}
    live: list[list[bool] | None] = [None] * len(jaxpr.eqns)
    for k in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[k]
        used = [v in want for v in eqn.outvars]
        if jx.effects_of(eqn):
            used = [True] * len(used)
        if any(used):
            live[k] = used
            want.update(v for v in eqn.invars if not jx.is_literal(v))
    return live


class Converter:
    """Evaluates jaxprs with adplugin primitives (into `graph` when given; see module doc)."""

    def __init__(self, graph: Graph | None = None):
        self.graph = graph
        self.no_rule: Counter[str] = Counter()
        self.failed: dict[str, str] = {}
        self._literals: dict[Any, Tensor] = {}
        self._broadcasts: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    # --- values ----------------------------------------------------------------------------

    def constant(self, value: Any, dtype: Any = None) -> Any:
        if self.graph is None:
            return value if jx.is_tracer(value) else np.asarray(value, dtype)
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._literals:
            self._literals[key] = self.graph.constant(array)
        return self._literals[key]

    def read(self, env: dict[Any, Any], v: Any) -> Any:
        if jx.is_literal(v):
            return self.constant(v.val, v.aval.dtype)
        return env[v]

    def broadcast(self, x: Any, shape: Sequence[int]) -> Any:
        """lax's implicit broadcasting: rank-0 operands and size-1 dims stretch to `shape`."""
        shape = tuple(shape)
        if tuple(x.shape) == shape:
            return x
        dims = tuple(range(len(shape) - len(x.shape), len(shape)))
        if type(x) is not Tensor:
            return get_primitive("broadcast_in_dim").bind(x, shape=shape,
                                                          broadcast_dimensions=dims)
        key = (x.node.id, shape)
        if key not in self._broadcasts:
            self._broadcasts[key] = get_primitive("broadcast_in_dim").bind(
                x, shape=shape, broadcast_dimensions=dims)
        return self._broadcasts[key]

    # --- errors ----------------------------------------------------------------------------

    def unsupported(self, name: str, why: str | None, where: str = "") -> None:
        """Record (graph mode) or raise (otherwise) an equation that cannot be converted."""
        label = f"{name} (in {where})" if where else name
        if self.graph is not None:
            if why is None:
                self.no_rule[label] += 1
            else:
                self.failed.setdefault(label, why)
            return
        raise TraceError(message(
            "trace", f"a derivative rule uses the JAX primitive {label}, which adplugin "
            "cannot convert", why or "no conversion rule", "adplugin primitives or JAX "
            "primitives with a conversion rule (adplugin.frontends.trace.supported_primitives())",
            "write that part with ap.* ops, or define an adplugin primitive for it"))

    # --- evaluation ------------------------------------------------------------------------

    def run(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any],
            needed: Sequence[bool] | None = None) -> list[Any]:
        """The jaxpr's outputs (MISSING where not `needed` or not convertible)."""
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = self.constant(c)
        env.update(zip(jaxpr.invars, args))
        for eqn, used in zip(jaxpr.eqns, live_equations(jaxpr, needed)):
            if used is not None:
                outs = self.equation(eqn, [self.read(env, v) for v in eqn.invars], used)
                env.update(zip(eqn.outvars, outs))
        flags = [True] * len(jaxpr.outvars) if needed is None else needed
        return [self.read(env, v) if n else MISSING for v, n in zip(jaxpr.outvars, flags)]

    def equation(self, eqn: Any, args: list[Any], used: list[bool]) -> list[Any]:
        from adplugin.frontends import regions

        name = eqn.primitive.name
        missing = [MISSING] * len(eqn.outvars)
        prim = adplugin_primitive(eqn.primitive)
        body = jx.sub_jaxpr(eqn.params, CALLS[name]) if prim is None and name in CALLS else None
        if body is not None:  # inlined even with missing operands, to find all unsupported ops
            return self.run(*jx.jaxpr_and_consts(body), args, used)
        if prim is None and name in regions.REGIONS:
            return regions.apply(self, eqn, args, used)
        if prim is None and name not in RULES:
            self.unsupported(name, None)
            return missing
        if any(a is MISSING for a in args):
            return missing
        avals = [v.aval for v in eqn.outvars]
        try:
            if name in ELEMENTWISE or (prim is not None and prim.elementwise):
                args = [self.broadcast(a, avals[0].shape) for a in args]
            if prim is not None:
                out = prim.bind(*args, **dict(eqn.params))
            else:
                out = RULES[name](args, dict(eqn.params))
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            outs = [self.constant(o, a.dtype) if isinstance(o, (np.ndarray, np.generic)) else o
                    for o, a in zip(outs, avals)]
            for o, a in zip(outs, avals, strict=True):
                if tuple(o.shape) != tuple(a.shape) or np.dtype(o.dtype) != np.dtype(a.dtype):
                    raise Unsupported(f"converted to {np.dtype(o.dtype).name}{list(o.shape)}, "
                                      f"expected {a.str_short()}")
        except (Unsupported, AdpluginError, TypeError, ValueError) as e:
            self.unsupported(name, str(e))
            return missing
        return outs


def evaluate(closed: Any, args: Sequence[Any]) -> list[Any]:
    """A closed jaxpr's outputs computed with adplugin primitives on `args` (any operands:
    JAX values, graph tensors, linear stand-ins); raises TraceError if it cannot convert."""
    jaxpr, consts = jx.jaxpr_and_consts(closed)
    return Converter().run(jaxpr, consts, args)
