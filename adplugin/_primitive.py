"""One declarative definition per primitive, registered into JAX and into adplugin's registry.

A primitive is defined once with `define_primitive`: its name, abstract evaluation, StableHLO
lowering, JVP rules, transpose rule (linear primitives only), batching rule and sharding rule.
A rule that is deliberately absent is an explicit marker (`NOT_DIFFERENTIABLE`,
`ZERO_DERIVATIVE`, `NOT_LINEAR`) with a clear error, never a silent gap.

Rules are written with `ap.*` ops and `Primitive.bind`, which dispatch on their arguments: JAX
arrays and tracers bind the JAX primitive, symbolic graph tensors add a graph node. So JAX's AD
and adplugin's own graph derivation run the very same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from jax import dtypes as jax_dtypes

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import DerivativeError, ShardingRuleError, message

Spec = tuple[Any, ...]  # a partition spec: one mesh-axis entry (or None) per dimension


class ShapeDtype(NamedTuple):
    """What abstract evaluation returns: the output's shape, dtype and weak-typedness."""

    shape: tuple[int, ...]
    dtype: np.dtype
    weak_type: bool = False


class Linear:
    """Stands for a linear argument in a transpose rule: its value is unknown, its type is not."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: Sequence[int], dtype: Any):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Linear({self.dtype.name}{list(self.shape)})"


@dataclass(frozen=True)
class _Marker:
    """A rule deliberately left out, with the reason given in errors."""

    name: str

    def __repr__(self) -> str:
        return self.name


NOT_DIFFERENTIABLE = _Marker("NOT_DIFFERENTIABLE")  # asking for a derivative is an error
ZERO_DERIVATIVE = _Marker("ZERO_DERIVATIVE")  # piecewise constant: the derivative is zero
NOT_LINEAR = _Marker("NOT_LINEAR")  # no transpose: reverse mode linearizes first

JvpRule = Callable[..., Any]  # (tangent, primal_out, *primals, **params) -> tangent contribution


JAX_NAMESPACE = "ap."  # JAX knows each adplugin primitive as "ap.<name>" (jaxprs, errors)


def jax_name(name: str) -> str:
    """The name JAX knows the adplugin primitive `name` by: namespaced, so a jaxpr tells
    adplugin's `ap.mul` from `lax.mul_p` and JAX's name-based tools never confuse them."""
    return JAX_NAMESPACE + name


@dataclass(frozen=True, eq=False)
class Primitive:
    """An adplugin primitive: its definition and the JAX primitive it is registered as.

    `name` is the short registry name (`get_primitive("mul")`, graph text, spec tables); the
    JAX primitive is named `jax_name` ("ap.mul"), which is what jaxprs show.
    """

    name: str
    abstract_eval: Callable[..., ShapeDtype]
    lowering: Callable[..., Any]
    jvp: tuple[JvpRule | None, ...] | _Marker
    transpose: Callable[..., Sequence[Any]] | _Marker
    batching: Callable[..., tuple[Any, int | None]]
    sharding: Callable[..., Spec]
    elementwise: bool
    jax_primitive: Any = field(repr=False)

    def bind(self, *args: Any, **params: Any) -> Any:
        """Apply the primitive where the arguments and the dispatch context say.

        A symbolic argument (graph tensor, linear stand-in, tape value, variable) takes the
        call by its type; otherwise the effective scope may (a graph being built adds a node
        for ops on constants, a recording records ops on arrays it watches); otherwise JAX.
        """
        handler = None
        for a in args:
            h = _handlers.get(type(a))
            if h is not None and (handler is None or h[0] > handler[0]):
                handler = h
        if handler is not None:
            return handler[1](self, args, params)
        scope = _context.effective()
        if scope is not None:
            taker = scope_taker(scope, args)
            if taker is not None:
                return taker(self, args, params)
        return self.jax_primitive.bind(*args, **params)

    @property
    def is_linear(self) -> bool:
        return not isinstance(self.transpose, _Marker)

    @property
    def jax_name(self) -> str:
        """The JAX primitive's name, as jaxprs print it ("ap.mul" for `mul`)."""
        return str(self.jax_primitive.name)

    def __repr__(self) -> str:
        return f"<adplugin primitive {self.name}>"


_registry: dict[str, Primitive] = {}
SymbolicBind = Callable[[Primitive, Sequence[Any], dict[str, Any]], Any]
# Filled once at import by the modules defining symbolic types (a static table, like JAX's
# rule tables): type -> (priority, bind). Nothing on the dispatch path mutates it.
_handlers: dict[type, tuple[int, SymbolicBind]] = {}
# Decides, for a scope and arguments without symbolic ones, who takes the op (None: JAX).
_scope_takers: list[Callable[[Any, Sequence[Any]], SymbolicBind | None]] = []


def register_symbolic_type(cls: type, bind: SymbolicBind, priority: int = 0) -> None:
    """Make `Primitive.bind` call `bind(prim, args, params)` when an argument is a `cls`.

    Graph tensors add a graph node this way; when arguments of several symbolic types meet,
    the handler of highest priority takes the call.
    """
    _handlers[cls] = (priority, bind)


def register_scope_taker(taker: Callable[[Any, Sequence[Any]], SymbolicBind | None]) -> None:
    """Add a rule deciding whether a scope takes an op on plain arguments (at import time)."""
    _scope_takers.append(taker)


def scope_taker(scope: Any, args: Sequence[Any]) -> SymbolicBind | None:
    """Who takes an op on plain (non-symbolic) arguments in `scope`, or None for JAX."""
    for rule in _scope_takers:
        taker = rule(scope, args)
        if taker is not None:
            return taker
    return None


def is_symbolic(x: Any) -> bool:
    return type(x) in _handlers


def list_primitives() -> list[str]:
    """Names of all registered adplugin primitives, built-in and user-defined."""
    return sorted(_registry)


def get_primitive(name: str) -> Primitive:
    try:
        return _registry[name]
    except KeyError:
        known = list_primitives()
        raise KeyError(f"no adplugin primitive named {name!r}; known: {known}") from None


# ----------------------------------------------------------------------------------------------
# Derived rules for elementwise primitives
# ----------------------------------------------------------------------------------------------

def elementwise_abstract_eval(name: str) -> Callable[..., ShapeDtype]:
    """Operands of equal shape and dtype; the output has that shape and dtype."""

    def rule(*avals: Any, **params: Any) -> ShapeDtype:
        check_same_shape_dtype(name, avals)
        return ShapeDtype(avals[0].shape, avals[0].dtype, all(a.weak_type for a in avals))

    return rule


def check_same_shape_dtype(name: str, avals: Sequence[Any]) -> None:
    first = avals[0]
    for a in avals[1:]:
        if a.shape != first.shape or a.dtype != first.dtype:
            given = ", ".join(f"{x.dtype}{list(x.shape)}" for x in avals)
            raise TypeError(message(
                name, "the primitive takes operands of one shape and dtype", given,
                "equal shapes and dtypes",
                f"call ap.{name}'s NumPy-style wrapper, which broadcasts and promotes"))


def merge_specs(name: str, specs: Sequence[Spec]) -> Spec:
    """The elementwise sharding rule: each output dimension is sharded like its operands."""
    out: list[Any] = [None] * len(specs[0])
    for spec in specs:
        for i, s in enumerate(spec):
            if s is None:
                continue
            if out[i] is not None and out[i] != s:
                raise ShardingRuleError(message(
                    name, "operands are sharded differently along one dimension",
                    f"dimension {i} sharded over {out[i]} and {s}", "one sharding per dimension",
                    "reshard one operand (jax.sharding.reshard) before the op"))
            out[i] = s
    used = [a for entry in out for a in ((entry,) if isinstance(entry, str) else entry or ())]
    if len(used) != len(set(used)):
        raise ShardingRuleError(message(
            name, "one mesh axis would shard two dimensions of the result",
            f"operand specs {', '.join(str(tuple(s)) for s in specs)}",
            "each mesh axis on one dimension", "reshard one operand (ap.shard, or "
            "jax.sharding.reshard) so the operands split the same dimension"))
    return tuple(out)


def _elementwise_sharding(name: str) -> Callable[..., Spec]:
    def rule(specs: Sequence[Spec], *avals: Any, **params: Any) -> Spec:
        return merge_specs(name, specs)

    return rule


def moveaxis(x: Any, source: int, destination: int) -> Any:
    """Move one axis with the transpose primitive (used by batching rules)."""
    if source == destination:
        return x
    perm = [i for i in range(np.ndim(x)) if i != source]
    perm.insert(destination, source)
    return get_primitive("transpose").bind(x, permutation=tuple(perm))


def bdim_to_front(x: Any, dim: int | None, size: int) -> Any:
    """`x` with its batch dimension first; an unbatched `x` is broadcast along a new one."""
    if dim is None:
        shape = (size, *np.shape(x))
        dims = tuple(range(1, len(shape)))
        return get_primitive("broadcast_in_dim").bind(x, shape=shape, broadcast_dimensions=dims)
    return moveaxis(x, dim, 0)


def batch_size(args: Sequence[Any], dims: Sequence[int | None]) -> int:
    return next(np.shape(a)[d] for a, d in zip(args, dims) if d is not None)


def _elementwise_batching(prim: Primitive) -> Callable[..., tuple[Any, int]]:
    def rule(args: Sequence[Any], dims: Sequence[int | None], **params: Any) -> tuple[Any, int]:
        batched = [d for d in dims if d is not None]
        same = all(d == batched[0] for d in batched)
        if same and len(batched) == len(dims):
            return prim.bind(*args, **params), batched[0]
        size = batch_size(args, dims)
        moved = [bdim_to_front(a, d, size) for a, d in zip(args, dims)]
        return prim.bind(*moved, **params), 0

    return rule


# ----------------------------------------------------------------------------------------------
# Generic rule drivers (shared by the JAX registration and adplugin's graph engine)
# ----------------------------------------------------------------------------------------------

def _has_tangent(t: Any) -> bool:
    return t is not None and np.dtype(getattr(t, "dtype", np.float32)) != jax_dtypes.float0


def apply_jvp(prim: Primitive, primals: Sequence[Any], tangents: Sequence[Any],
              **params: Any) -> tuple[Any, Any]:
    """Primal output (computed from primals only) and the summed tangent (None when zero)."""
    out = prim.bind(*primals, **params)
    live = [i for i, t in enumerate(tangents) if _has_tangent(t)]
    if not live or prim.jvp is ZERO_DERIVATIVE:
        return out, None
    if isinstance(prim.jvp, _Marker):
        raise DerivativeError(message(
            prim.name, "the op is not differentiable", f"a tangent for operand(s) {live}",
            "no derivative requests through this op",
            "wrap its inputs in ap.stop_gradient, or define the primitive with a jvp rule"))
    total = None
    for i in live:
        rule = prim.jvp[i]
        if rule is None:  # the output does not depend smoothly on this operand
            continue
        part = rule(tangents[i], out, *primals, **params)
        if part is None:  # the rule found the contribution to be zero (e.g. integer output)
            continue
        total = part if total is None else get_primitive("add").bind(total, part)
    return out, total


def apply_transpose(prim: Primitive, ct: Any, linear: Sequence[bool], *args: Any,
                    **params: Any) -> Sequence[Any]:
    if isinstance(prim.transpose, _Marker):
        raise DerivativeError(message(
            prim.name, "the op is not linear, so it has no transpose rule",
            "a request to transpose it", "a linear primitive",
            "differentiate with ap.gradients/jax.grad, which linearize before transposing"))
    values = [Linear(a.shape, a.dtype) if lin else a for a, lin in zip(args, linear)]
    return prim.transpose(ct, *values, **params)


# ----------------------------------------------------------------------------------------------
# define_primitive
# ----------------------------------------------------------------------------------------------

def _as_shape_dtype(out: Any) -> ShapeDtype:
    if isinstance(out, ShapeDtype):
        return out
    shape, dtype, *rest = out
    return ShapeDtype(tuple(shape), np.dtype(dtype), bool(rest[0]) if rest else False)


def define_primitive(
    name: str,
    *,
    lowering: Callable[..., Any],
    jvp: Sequence[JvpRule | None] | _Marker,
    abstract_eval: Callable[..., Any] | None = None,
    transpose: Callable[..., Sequence[Any]] | _Marker = NOT_LINEAR,
    batching: Callable[..., tuple[Any, int | None]] | None = None,
    sharding: Callable[..., Spec] | None = None,
    elementwise: bool = False,
) -> Primitive:
    """Define a primitive once and register it into JAX and into adplugin.

    Args:
      name: unique primitive name (shown in graphs and errors; jaxprs show it as
        "ap.<name>", the JAX primitive's namespaced name).
      lowering: `(ctx, *operands, **params) -> ir.Value` emitting StableHLO ops
        (`ap.extend.hlo`); `ctx.out_type()` is the output's IR type.
      jvp: one rule per operand, `(tangent, primal_out, *primals, **params) -> tangent_out`,
        written with `ap.*` ops (None where the derivative is zero, e.g. integer indices), or
        the marker `NOT_DIFFERENTIABLE` / `ZERO_DERIVATIVE`.
      abstract_eval: `(*avals, **params) -> ShapeDtype(shape, dtype, weak_type)`; derived
        for elementwise primitives (equal shapes and dtypes in, the same out).
      transpose: for linear primitives, `(ct, *args, **params) -> cotangents`, where each
        linear argument arrives as `Linear(shape, dtype)`; otherwise `NOT_LINEAR`.
      batching: `(args, batch_dims, **params) -> (out, out_batch_dim)`; derived for
        elementwise primitives.
      sharding: `(specs, *avals, **params) -> spec`, the output partition spec from the
        operands' specs (used when shardings are part of the types); derived for elementwise.
      elementwise: derive the abstract eval, batching and sharding rules as for `lax.add`.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise TypeError(message(
            "define_primitive", "the name is not a non-empty string", repr(name)[:80],
            "a unique name such as 'mylib.floor'", "pass the primitive's name as a string"))
    if name in _registry:
        raise ValueError(f"an adplugin primitive named {name!r} is already registered; "
                         "choose another name")
    if abstract_eval is None:
        if not elementwise:
            raise TypeError(f"define_primitive({name!r}): abstract_eval is required for a "
                            "non-elementwise primitive")
        abstract_eval = elementwise_abstract_eval(name)
    if sharding is None:
        if not elementwise:
            raise TypeError(f"define_primitive({name!r}): sharding is required for a "
                            "non-elementwise primitive (a rule from operand specs to the "
                            "output spec)")
        sharding = _elementwise_sharding(name)
    if batching is None and not elementwise:
        raise TypeError(f"define_primitive({name!r}): batching is required for a "
                        "non-elementwise primitive")
    jvp_rules = jvp if isinstance(jvp, (_Marker, tuple)) else tuple(jvp)

    jax_prim = jx.new_primitive(jax_name(name))
    prim = Primitive(name, abstract_eval, lowering, jvp_rules, transpose,
                     batching or (lambda *a, **k: (None, None)), sharding, elementwise, jax_prim)
    if batching is None:
        object.__setattr__(prim, "batching", _elementwise_batching(prim))

    def jax_abstract_eval(*avals: Any, **params: Any) -> Any:
        out = _as_shape_dtype(abstract_eval(*avals, **params))
        specs = [jx.mesh_spec(a) for a in avals]
        like = next((a for a, s in zip(avals, specs) if s is not None), avals[0])
        spec = None
        if any(s is not None for s in specs):
            filled = [s if s is not None else (None,) * len(a.shape) for a, s in zip(avals, specs)]
            spec = prim.sharding(filled, *avals, **params)
        return jx.make_aval(like, out.shape, out.dtype, out.weak_type, spec)

    jx.register(
        jax_prim,
        abstract_eval=jax_abstract_eval,
        lowering=lowering,
        jvp=lambda primals, tangents, **p: apply_jvp(prim, primals, tangents, **p),
        transpose=lambda ct, lin, *args, **p: apply_transpose(prim, ct, lin, *args, **p),
        batching_rule=prim.batching,
    )
    _registry[name] = prim
    return prim
