"""Region nodes: jaxpr equations kept whole in a traced graph, with JAX's derivatives of them.

A `custom_jvp` or `custom_vjp` function, and a `cond`, `scan` or `while` loop, becomes one graph
node applying the primitive `trace.call` (one node per output). Its value is the equation
itself (re-bound at lowering, so JAX lowers it as it would); its derivatives are what
jax.grad would use, obtained from JAX as jaxprs and converted into adplugin primitives when a
derivative is asked for:

- JVP with respect to operand i: the jaxpr of `jax.jvp` of the equation in operand i. For a
  custom_jvp function that is the user's rule; for control flow, JAX's own (a `cond` of the
  branches' JVPs, a `scan` of the body's), which the converter turns into region nodes again.
- transpose, for a region linear in some operands (the JVP regions above): the jaxpr of
  `jax.vjp` in those operands.
- custom_vjp: the JVP is `trace.custom_vjp_lin(t, *primals)`, linear in t, whose transpose is
  the jaxpr of `jax.vjp` of the equation: the user's fwd and bwd. As in JAX, it has no forward
  value (forward mode of a custom_vjp function is an error).

So `ap.gradients` on the graph, and JAX transformations of the run graph, give jax.grad's
answers, to any order the rules support. Jaxprs are traced once per region, operand and
output, and cached on the region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import DerivativeError, message, type_error
from adplugin._lru import LRU
from adplugin._primitive import (
    Linear,
    ShapeDtype,
    Spec,
    batch_size,
    bdim_to_front,
    define_primitive,
)
from adplugin.frontends import interpret
from adplugin.frontends.lax_rules import CALLS, RULES
from adplugin.ir.graph import CONSTANT, Tensor

REGIONS = ("custom_jvp_call", "custom_vjp_call", "cond", "scan", "while")


def _is_float(aval: Any) -> bool:
    return jx.kind_of(aval.dtype) == "f"


def _struct(aval: Any) -> Any:
    return jax.ShapeDtypeStruct(tuple(aval.shape), aval.dtype,
                                weak_type=bool(getattr(aval, "weak_type", False)))


def _name_of(eqn: Any) -> str | None:
    """The user's function name of a custom_jvp/custom_vjp equation, where JAX recorded it."""
    body = eqn.params.get("call_jaxpr")
    info = getattr(getattr(body, "jaxpr", body), "debug_info", None)
    name = getattr(info, "func_name", None)
    return name if isinstance(name, str) else None


class Region:
    """One jaxpr equation kept whole, and the jaxprs of its derivatives (made on demand)."""

    def __init__(self, eqn: Any, fn: Callable[..., list[Any]] | None = None,
                 label: str | None = None):
        self.eqn = eqn
        self.kind = str(eqn.primitive.name)
        self.label = label or (f"{self.kind}:{_name_of(eqn)}" if _name_of(eqn) else self.kind)
        self._fn = fn
        self.in_avals = [v.aval for v in eqn.invars]
        self.out_avals = [v.aval for v in eqn.outvars]
        # derivative and batched jaxprs, keyed by everything they depend on (all of the key
        # but the region itself)
        self._jaxprs: LRU[Any] = LRU(64)

    def __repr__(self) -> str:
        return self.label

    def fn(self, *args: Any) -> list[Any]:
        """The equation applied to `args` in JAX's current trace (its custom rule kept)."""
        if self._fn is not None:
            return self._fn(*args)
        return jx.rebind_equation(self.eqn, *args)

    def _cached(self, key: Any, make: Any) -> Any:
        return self._jaxprs.get_or_build(key, make)

    def jvp_jaxpr(self, i: int, k: int) -> Any:
        """(*operands, t_i) -> [tangent of output k], JAX's JVP in operand i."""

        def make() -> Any:
            def f(*xs: Any) -> list[Any]:
                *primals, t = xs

                def fi(xi: Any) -> Any:
                    return self.fn(*primals[:i], xi, *primals[i + 1:])[k]

                return [jax.jvp(fi, (primals[i],), (t,))[1]]

            return self._trace(f, [*self.in_avals, self.in_avals[i]], "forward")

        return self._cached(("jvp", i, k), make)

    def vjp_jaxpr(self, wrt: tuple[int, ...], k: int, at_zero: bool) -> Any:
        """(*other operands or all operands, ct) -> cotangents of the operands `wrt`, JAX's
        VJP of output k; at zeros of the `wrt` operands when `at_zero` (a linear region's
        transpose), else at the given operands."""

        def make() -> Any:
            def f(*xs: Any) -> list[Any]:
                *given, ct = xs
                it = iter(given)
                operands = [np.zeros(a.shape, a.dtype) if at_zero and n in wrt else next(it)
                            for n, a in enumerate(self.in_avals)]

                def fw(*ws: Any) -> Any:
                    full = list(operands)
                    for n, w in zip(wrt, ws):
                        full[n] = w
                    return self.fn(*full)[k]

                _, pullback = jax.vjp(fw, *[operands[n] for n in wrt])
                return list(pullback(ct))

            ins = [a for n, a in enumerate(self.in_avals) if not (at_zero and n in wrt)]
            return self._trace(f, [*ins, self.out_avals[k]], "reverse")

        return self._cached(("vjp", wrt, k, at_zero), make)

    def _trace(self, f: Any, avals: Sequence[Any], mode: str) -> Any:
        try:
            return jax.make_jaxpr(f)(*map(_struct, avals))
        except Exception as e:
            raise DerivativeError(message(
                f"trace({self.label})", f"JAX cannot {mode}-differentiate this region",
                f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].rstrip('.')}",
                f"a region JAX differentiates in {mode} mode",
                "use lax.scan (or lax.fori_loop with static bounds) instead of a "
                "while_loop with a data-dependent trip count; forward mode "
                "(ap.forward_gradients, jax.jvp) works for while loops"
                if self.kind == "while" else "differentiate it in the mode its rule "
                "supports (a custom_vjp function has reverse mode only)")) from e

    def vmapped(self, dims: Sequence[int | None], args: Sequence[Any]) -> Any:
        """The jaxpr of `jax.vmap` of the equation (JAX batches custom rules and control
        flow itself: a batched predicate turns a cond into a select, for instance)."""
        shapes = tuple((tuple(np.shape(a)), np.dtype(a.dtype).str) for a in args)

        def make() -> Any:
            structs = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
            return jax.make_jaxpr(jax.vmap(self.fn, in_axes=list(dims)))(*structs)

        return self._cached(("vmap", tuple(dims), shapes), make)


# ----------------------------------------------------------------------------------------------
# trace.call(*operands, region, index): output `index` of the region
# ----------------------------------------------------------------------------------------------

def _out_eval(*avals: Any, region: Region, index: int, **params: Any) -> ShapeDtype:
    if avals and [(tuple(a.shape), np.dtype(a.dtype)) for a in avals] != [
            (tuple(a.shape), np.dtype(a.dtype)) for a in region.in_avals]:
        given = ", ".join(f"{np.dtype(a.dtype).name}{list(a.shape)}" for a in avals)
        want = ", ".join(f"{np.dtype(a.dtype).name}{list(a.shape)}" for a in region.in_avals)
        raise type_error("trace.call", f"operands unlike those {region.label} was traced "
                         "with", given, want, "trace the function again for these operands")
    out = region.out_avals[index]
    return ShapeDtype(tuple(out.shape), np.dtype(out.dtype), bool(out.weak_type))


def _call_lower(ctx: Any, *operands: Any, region: Region, index: int) -> Any:
    return jx.lower_function(ctx, lambda *xs: [region.fn(*xs)[index]], *operands)[0]


def _call_jvp(i: int) -> Any:
    def rule(g: Any, out: Any, *primals: Any, region: Region, index: int) -> Any:
        if not _is_float(region.in_avals[i]) or not _is_float(region.out_avals[index]):
            return None
        if region.kind == "custom_vjp_call":
            if type(g) is Tensor:  # a graph's forward mode
                raise DerivativeError(message(
                    f"trace({region.label})", "forward-mode derivative of a custom_vjp "
                    "function", "ap.forward_gradients through it", "reverse mode "
                    "(ap.gradients), the only mode its rule defines (as in JAX)",
                    "use ap.gradients, or give the function a custom_jvp rule"))
            return custom_vjp_lin_p.bind(g, *primals, region=region, operand=i, index=index)
        return interpret.evaluate(region.jvp_jaxpr(i, index), [*primals, g])[0]

    return rule


class _PerOperand(tuple):  # type: ignore[type-arg]
    """One JVP rule per operand, for any number of operands."""

    def __getitem__(self, i: Any) -> Any:
        return _call_jvp(i)


def _call_transpose(ct: Any, *args: Any, region: Region, index: int) -> list[Any]:
    # only a region linear in its linear operands is transposed (one made by a JVP jaxpr)
    wrt = tuple(n for n, a in enumerate(args) if isinstance(a, Linear))
    given = [a for a in args if not isinstance(a, Linear)]
    cts = iter(interpret.evaluate(region.vjp_jaxpr(wrt, index, at_zero=True), [*given, ct]))
    return [next(cts) if isinstance(a, Linear) else None for a in args]


def _call_batching(args: Sequence[Any], dims: Sequence[int | None], *, region: Region,
                   index: int) -> tuple[Any, int]:
    closed = region.vmapped(dims, args)
    return interpret.evaluate(closed, list(args))[index], 0


def _replicated(specs: Sequence[Spec], *avals: Any, region: Region, index: int,
                **params: Any) -> Spec:
    # with explicitly sharded operands the region's output is declared replicated (XLA
    # gathers it); JAX lowers the region itself, so values are unaffected
    return (None,) * len(region.out_avals[index].shape)


call_p = define_primitive(
    "trace.call", abstract_eval=_out_eval, lowering=_call_lower, jvp=_PerOperand(),
    transpose=_call_transpose, batching=_call_batching, sharding=_replicated)


# ----------------------------------------------------------------------------------------------
# trace.custom_vjp_lin(t, *primals, region, operand, index): J_operand(primals) t, for a
# custom_vjp region; its transpose runs the user's fwd and bwd
# ----------------------------------------------------------------------------------------------

def _lin_lower(ctx: Any, *operands: Any, region: Region, operand: int, index: int) -> Any:
    raise DerivativeError(message(
        f"trace({region.label})", "forward-mode derivative of a custom_vjp function",
        "a JVP (jax.jvp, jax.jacfwd) of a graph holding it", "reverse mode only (as in JAX)",
        "use jax.grad / ap.gradients, or give the function a custom_jvp rule"))


def _lin_transpose(ct: Any, t: Any, *primals: Any, region: Region, operand: int,
                   index: int) -> list[Any]:
    closed = region.vjp_jaxpr((operand,), index, at_zero=False)
    (ct_in,) = interpret.evaluate(closed, [*primals, ct])
    return [ct_in, *([None] * len(primals))]


def _lin_jvp(i: int) -> Any:
    def rule(g: Any, out: Any, t: Any, *primals: Any, **params: Any) -> Any:
        if i == 0:  # linear in t
            return custom_vjp_lin_p.bind(g, *primals, **params)
        raise DerivativeError(message(
            f"trace({params['region'].label})", "a derivative of a custom_vjp function's "
            "linearization with respect to its primal inputs", "forward mode over reverse",
            "reverse mode over reverse (ap.gradients of ap.gradients, jax.grad of jax.grad)",
            "differentiate the gradient again in reverse mode"))

    return rule


class _LinJvp(tuple):  # type: ignore[type-arg]
    def __getitem__(self, i: Any) -> Any:
        return _lin_jvp(i)


def _lin_batching(args: Sequence[Any], dims: Sequence[int | None], *, region: Region,
                  operand: int, index: int) -> tuple[Any, int]:
    # every operand batched in front; the batched region is the single equation JAX makes of
    # the vmapped custom_vjp function (its fwd and bwd batched with it)
    size = batch_size(args, dims)
    moved = [bdim_to_front(a, d, size) for a, d in zip(args, dims)]
    closed = region.vmapped([0] * len(region.in_avals), moved[1:])
    jaxpr = closed.jaxpr
    eqn = jaxpr.eqns[0] if len(jaxpr.eqns) == 1 else None
    if eqn is None or eqn.primitive.name != region.kind or list(eqn.invars) != list(
            jaxpr.invars) or list(eqn.outvars) != list(jaxpr.outvars):
        raise DerivativeError(message(
            f"trace({region.label})", "cannot batch the custom_vjp function's derivative",
            str(jaxpr)[:200], "JAX's vmap of it as one custom_vjp_call",
            "differentiate inside the vmapped function instead"))
    out = custom_vjp_lin_p.bind(*moved, region=Region(eqn), operand=operand, index=index)
    return out, 0


def _lin_eval(t: Any, *avals: Any, region: Region, operand: int, index: int) -> ShapeDtype:
    return _out_eval(*avals, region=region, index=index)


custom_vjp_lin_p = define_primitive(
    "trace.custom_vjp_lin", abstract_eval=_lin_eval, lowering=_lin_lower, jvp=_LinJvp(),
    transpose=_lin_transpose, batching=_lin_batching, sharding=_replicated)


# ----------------------------------------------------------------------------------------------
# Converting an equation into region nodes
# ----------------------------------------------------------------------------------------------

def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(v, "eqns"):
                found.append(v)
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                found.append(v.jaxpr)
    return found


def _unconvertible(jaxprs: Sequence[Any], out: set[str]) -> set[str]:
    """Names of the primitives in `jaxprs` (nested ones included) with no conversion."""
    for jaxpr in jaxprs:
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if (name not in RULES and name not in CALLS and name not in REGIONS
                    and interpret.adplugin_primitive(eqn.primitive) is None):
                out.add(name)
            _unconvertible(_sub_jaxprs(eqn.params), out)
    return out


def _check(conv: interpret.Converter, region: Region) -> None:
    """At trace time: report the primitives of the region's body, and of a custom rule's
    derivative jaxprs, that adplugin cannot convert (so its derivatives would fail later)."""
    jaxprs = _sub_jaxprs(region.eqn.params)
    floats_in = [i for i, a in enumerate(region.in_avals) if _is_float(a)]
    floats_out = [k for k, a in enumerate(region.out_avals) if _is_float(a)]
    try:
        if region.kind == "custom_jvp_call":
            jaxprs += [region.jvp_jaxpr(i, k).jaxpr for i in floats_in for k in floats_out]
        elif region.kind == "custom_vjp_call":
            jaxprs += [region.vjp_jaxpr((i,), k, at_zero=False).jaxpr
                       for i in floats_in for k in floats_out]
    except DerivativeError as e:
        conv.unsupported(region.kind, str(e), region.label)
    for name in sorted(_unconvertible(jaxprs, set())):
        conv.unsupported(name, None, region.label)


# --- while loops whose trip count is known when tracing: scans ---------------------------------

_MAX_TRIPS = 100_000  # longer loops are left to JAX (values and forward mode still work)


def _concrete(x: Any) -> np.ndarray | None:
    """`x`'s value if it is known now (a graph constant, a NumPy or concrete JAX array)."""
    if type(x) is Tensor:
        return x.node.value if x.node.op == CONSTANT else None
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if isinstance(x, jax.Array) and not jx.is_tracer(x):
        return np.asarray(x)
    return None


def _dependencies(jaxpr: Any) -> list[set[int]]:
    """For each output of `jaxpr`, the positions of the inputs it depends on."""
    deps: dict[Any, set[int]] = {v: {n} for n, v in enumerate(jaxpr.invars)}
    for eqn in jaxpr.eqns:
        used = set().union(*[deps.get(v, set()) for v in eqn.invars if not jx.is_literal(v)])
        deps.update((v, used) for v in eqn.outvars)
    return [set() if jx.is_literal(v) else deps.get(v, set()) for v in jaxpr.outvars]


def _static_while(eqn: Any, args: Sequence[Any]) -> Region | None:
    """A while loop as a scan when its trip count is fixed at trace time: the condition reads
    only carries that start from constants and that the body updates from constants and
    themselves. Then the loop runs those carries now to count the trips, and becomes a
    `lax.scan` of that length (which JAX reverse-differentiates), else None."""
    p = eqn.params
    nc, nb = int(p["cond_nconsts"]), int(p["body_nconsts"])
    cond, body = p["cond_jaxpr"], p["body_jaxpr"]
    (cond_deps,) = _dependencies(cond.jaxpr)
    body_deps = _dependencies(body.jaxpr)
    carries = {n - nc for n in cond_deps if n >= nc}
    consts = {n for n in cond_deps if n < nc}
    body_consts: set[int] = set()
    frontier = set(carries)
    while frontier:  # the carries (and body consts) the counting carries depend on
        k = frontier.pop()
        for n in body_deps[k]:
            if n < nb:
                body_consts.add(n)
            elif n - nb not in carries:
                carries.add(n - nb)
                frontier.add(n - nb)
    known = [*(args[n] for n in consts), *(args[nc + n] for n in body_consts),
             *(args[nc + nb + k] for k in carries)]
    if any(_concrete(a) is None for a in known):
        return None
    values = [_concrete(a) if (n < nc and n in consts) or (nc <= n < nc + nb and n - nc in
              body_consts) or (n >= nc + nb and n - nc - nb in carries) else
              np.zeros(v.aval.shape, v.aval.dtype) for n, (a, v) in
              enumerate(zip(args, eqn.invars))]
    run_cond = jax.jit(jx.jaxpr_function(cond))
    run_body = jax.jit(jx.jaxpr_function(body))
    carry, trips = values[nc + nb:], 0
    while bool(run_cond(*values[:nc], *carry)[0]):  # only the counting carries are exact
        if trips == _MAX_TRIPS:
            return None
        carry, trips = list(run_body(*values[nc:nc + nb], *carry)), trips + 1

    def as_scan(*xs: Any) -> list[Any]:
        step = jx.jaxpr_function(body)
        init = tuple(xs[nc + nb:])

        def one(c: tuple[Any, ...], _: Any) -> tuple[tuple[Any, ...], None]:
            return tuple(step(*xs[nc:nc + nb], *c)), None

        return list(jax.lax.scan(one, init, None, length=trips)[0])

    return Region(eqn, as_scan, f"while(trips={trips})")


def apply(conv: interpret.Converter, eqn: Any, args: list[Any], used: list[bool]) -> list[Any]:
    """The outputs of a region equation: one `trace.call` node per used output."""
    region = None
    if eqn.primitive.name == "while" and not any(a is interpret.MISSING for a in args):
        region = _static_while(eqn, args)
    region = region or Region(eqn)
    if conv.graph is not None:
        _check(conv, region)
    if any(a is interpret.MISSING for a in args):
        return [interpret.MISSING] * len(used)
    return [call_p.bind(*args, region=region, index=k) if u else interpret.MISSING
            for k, u in enumerate(used)]
