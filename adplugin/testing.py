"""`check_primitive`: verify every rule of a primitive, built-in or user-defined.

    report = ap.testing.check_primitive(softplus_p, x, reference=jax.nn.softplus)

`op` is a `Primitive`, its name, or a public wrapper that binds exactly one adplugin primitive
(`ap.tanh`); a wrapper is traced once and the primitive it binds is checked on the operands
and params it binds it with. On those operands (and static params) it runs these checks, each
named in `CheckReport.passed` and in the `PrimitiveCheckError` that reports its failure:

  abstract_eval  the predicted shape and dtype equal the reference output's, the result types
                 of the lowered StableHLO module and a jitted run's output; a module the MLIR
                 verifier rejects because the lowering returns another type than predicted
                 fails here (or under `lowering` when the reference agrees with the
                 prediction);
  lowering       the module holds the expected op (`hlo_op=`) and no opaque custom call;
  impl           the primitive's eager impl runs;
  jit            the jitted result equals the eager impl's;
  reference      the primal value equals `reference(*args, **params)`: the reference is called
                 exactly as `op` is (a primitive's operands and params, or a wrapper's
                 arguments), e.g. `jnp.tanh`, or `lambda x, axes: jnp.sum(x, axis=axes)`;
  jvp            JVP and VJP match finite differences to second order in both modes (float64);
  transpose      for every operand the op is linear in: <ct, J v> == <J^T ct, v>;
  batching       `jax.jit(jax.vmap(...))` equals a Python loop over the members. Every member
                 of a batch differs: floats are scaled and shifted, integers drawn from the
                 operand's own range [min, max] (so indices stay valid), booleans flipped at
                 random places. Each operand is batched along each of its candidate axes
                 {None, 0, the last, a middle one} (those that exist); when the product over
                 operands exceeds `max_in_axes` combinations, a covering set is used instead:
                 all operands along axis 0, all along their last axis, then for every operand
                 and every candidate a combination giving it that candidate (the others drawn
                 at random), then random combinations up to the cap;
  sharding       with operands sharded over the host devices: under explicit mesh axes, the
                 output carries the sharding the rule declared, its value (and its gradient)
                 equal the unsharded run's; under automatic mesh axes, the output sharding XLA's
                 propagation gives the compiled executable equals the one the rule declared.
Checks that do not apply are listed with the reason in `CheckReport.not_applicable`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jax.test_util import check_grads

from adplugin import _jax_adapter as jx
from adplugin._errors import DerivativeError
from adplugin._primitive import (
    NOT_DIFFERENTIABLE,
    ZERO_DERIVATIVE,
    Primitive,
    _Marker,
    get_primitive,
    list_primitives,
)

__all__ = ["MAX_IN_AXES", "CheckReport", "PrimitiveCheckError", "check_primitive",
           "in_axes_combinations"]

_BATCH = 3  # members per batch in the batching check
MAX_IN_AXES = 16  # default cap on the in_axes combinations of the batching check


class PrimitiveCheckError(AssertionError):
    """A rule of a primitive disagrees with what it should compute; `check` names the check."""

    def __init__(self, message: str, check: str = ""):
        super().__init__(message)
        self.check = check


@dataclass
class CheckReport:
    """The checks that ran (and why any were not applicable), with notes on their coverage."""

    primitive: str
    passed: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Fail = Callable[[str, str], PrimitiveCheckError]


def check_primitive(op: Primitive | str | Callable[..., Any], *args: Any,
                    reference: Callable[..., Any] | None = None, hlo_op: str | None = None,
                    rtol: float | None = None, atol: float | None = None,
                    max_in_axes: int = MAX_IN_AXES, **params: Any) -> CheckReport:
    """Verify every rule of `op` on operands `args` with static `params`; see the module doc.

    `reference(*args, **params)` computes the expected primal value (called as `op` is);
    without one the `reference` check is reported as not applicable.
    """
    user_args, user_params = args, params
    prim, args, params = _resolve(op, tuple(np.asarray(a) for a in args), params)
    report = CheckReport(prim.name)

    def fn(*xs: Any) -> Any:
        return prim.bind(*xs, **params)

    def fail(check: str, detail: str) -> PrimitiveCheckError:
        return PrimitiveCheckError(f"check_primitive({prim.name}): {check} check failed: "
                                   f"{detail}", check)

    tol = _tolerances(args, rtol, atol)
    want = None
    if reference is not None:
        try:
            want = np.asarray(reference(*user_args, **user_params))
        except Exception as e:
            raise fail("reference", f"the reference raised {type(e).__name__}: {e}") from e
    predicted = _check_abstract_eval(fail, fn, args, want)
    lowered = _check_lowering(fail, fn, args, predicted, want, hlo_op)
    jitted = _run(fail, "jit", lambda: lowered.compile()(*args))
    if not _same_type(jitted, predicted):
        raise fail("abstract_eval", f"predicted {_type(predicted)} but a jitted run returns "
                                    f"{_type(jitted)}")
    report.passed += ["abstract_eval", "lowering"]
    eager = _run(fail, "impl", lambda: prim.jax_primitive.impl(*args, **params))
    report.passed.append("impl")
    _assert_close(fail, "jit", jitted, eager, tol, "the jitted result vs the eager impl's")
    report.passed.append("jit")
    if want is None:
        report.not_applicable["reference"] = "no reference given (reference=...)"
    else:
        _assert_close(fail, "reference", jitted, want, tol,
                      "the primitive's value vs the reference's")
        report.passed.append("reference")
    for name, outcome in (("jvp", _check_derivatives(prim, fail, fn, args)),
                          ("transpose", _check_transpose(prim, fail, fn, args))):
        if outcome is None:
            report.passed.append(name)
        else:
            report.not_applicable[name] = outcome
    _check_batching(fail, fn, args, tol, max_in_axes, report)
    report.passed.append("batching")
    outcome = _check_sharding(prim, fail, fn, args, jitted, tol)
    if outcome is None:
        report.passed.append("sharding")
    else:
        report.not_applicable["sharding"] = outcome
    return report


# ----------------------------------------------------------------------------------------------
# Which primitive: a Primitive, a name, or a wrapper binding one
# ----------------------------------------------------------------------------------------------

def _resolve(op: Any, args: tuple[np.ndarray, ...], params: dict[str, Any]
             ) -> tuple[Primitive, tuple[np.ndarray, ...], dict[str, Any]]:
    if isinstance(op, Primitive):
        return op, args, params
    if isinstance(op, str):
        return get_primitive(op), args, params
    if callable(op):
        return _primitive_of_wrapper(op, args, params)
    raise TypeError(f"check_primitive: op must be an adplugin Primitive, a primitive name or a "
                    f"wrapper function binding one; given {type(op).__name__} {op!r:.60}")


def _primitive_of_wrapper(op: Callable[..., Any], args: tuple[np.ndarray, ...],
                          params: dict[str, Any]
                          ) -> tuple[Primitive, tuple[np.ndarray, ...], dict[str, Any]]:
    """The one adplugin primitive `op(*args, **params)` binds, with its operands and params."""
    name = getattr(op, "__name__", repr(op))
    by_jax = {p.jax_primitive: p for p in map(get_primitive, list_primitives())}
    closed = jax.make_jaxpr(lambda *xs: op(*xs, **params))(*args)
    jaxpr, _ = jx.jaxpr_and_consts(closed)
    found: list[tuple[Primitive, dict[str, Any], list[Any]]] = []

    def walk(jaxpr: Any, sources: dict[Any, Any]) -> None:
        # a source: ("arg", i) for the wrapper's i-th argument, ("lit", value), or None
        def source(v: Any) -> Any:
            return ("lit", np.asarray(v.val)) if jx.is_literal(v) else sources.get(v)

        for eqn in jaxpr.eqns:
            prim = by_jax.get(eqn.primitive)
            if prim is not None:
                found.append((prim, dict(eqn.params), [source(v) for v in eqn.invars]))
                continue
            sub = jx.sub_jaxpr(eqn.params, ("jaxpr", "call_jaxpr"))
            if sub is not None:
                inner, _ = jx.jaxpr_and_consts(sub)
                walk(inner, {iv: source(v) for iv, v in zip(inner.invars, eqn.invars)})

    walk(jaxpr, {v: ("arg", i) for i, v in enumerate(jaxpr.invars)})
    fix = ("pass the primitive and its operands instead: check_primitive("
           "ap.get_primitive(name), *operands, **params)")
    if len(found) != 1:
        names = [p.name for p, _, _ in found]
        raise TypeError(f"check_primitive({name}): a wrapper must bind exactly one adplugin "
                        f"primitive on these arguments; it binds {names or 'none'}. Fix: {fix}")
    prim, eqn_params, sources = found[0]
    operands = []
    for k, src in enumerate(sources):
        if src is None:
            raise TypeError(f"check_primitive({name}): operand {k} of {prim.name} is computed "
                            f"inside the wrapper, not one of its arguments. Fix: {fix}")
        operands.append(args[src[1]] if src[0] == "arg" else src[1])
    return prim, tuple(operands), eqn_params


# ----------------------------------------------------------------------------------------------
# Values, types, tolerances
# ----------------------------------------------------------------------------------------------

def _run(fail: Fail, check: str, thunk: Callable[[], Any]) -> Any:
    try:
        return thunk()
    except Exception as e:  # a crash in a rule is that rule's failure
        raise fail(check, f"{type(e).__name__}: {e}") from e


def _type(x: Any) -> str:
    return f"{np.dtype(x.dtype).name}{list(x.shape)}"


def _same_type(x: Any, y: Any) -> bool:
    return tuple(x.shape) == tuple(y.shape) and np.dtype(x.dtype) == np.dtype(y.dtype)


def _tolerances(args: Sequence[Any], rtol: float | None, atol: float | None) -> tuple[float, float]:
    low = any(np.dtype(a.dtype).itemsize <= 4 and jx.kind_of(a.dtype) == "f" for a in args)
    return (rtol if rtol is not None else (2e-5 if low else 1e-10),
            atol if atol is not None else (2e-5 if low else 1e-10))


def _assert_close(fail: Fail, check: str, got: Any, want: Any, tol: tuple[float, float],
                  what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if not _same_type(got, want):
        raise fail(check, f"{what}: got {_type(got)}, expected {_type(want)}")
    if jx.kind_of(want.dtype) in "biu" or want.dtype == np.dtype(jax.dtypes.float0):
        ok = np.array_equal(got, want)
    else:
        ok = np.allclose(got, want, rtol=tol[0], atol=tol[1], equal_nan=True)
    if not ok:
        err = np.max(np.abs(got.astype(float) - want.astype(float))) if got.size else 0.0
        raise fail(check, f"{what}: values differ (max abs error {err:.3g})")


def _is_float(a: Any) -> bool:
    return jx.kind_of(a.dtype) == "f"


# the checks' own programs (vmapped, sharded) compile with little LLVM optimization: their
# semantics are the same, and compiling is most of their cost
_QUICK: dict[str, Any] = {"xla_backend_optimization_level": 0}


def _quick_jit(fn: Callable[..., Any], *args: Any) -> Any:
    """`jax.jit(fn)(*args)`, compiled with the quick options."""
    lowered = jax.jit(fn).lower(*args)
    try:
        compiled = lowered.compile(_QUICK)
    except Exception:  # an XLA without the option
        compiled = lowered.compile()
    return compiled(*args)


# ----------------------------------------------------------------------------------------------
# Abstract eval and lowering
# ----------------------------------------------------------------------------------------------

def _check_abstract_eval(fail: Fail, fn: Callable[..., Any], args: Sequence[Any],
                         want: np.ndarray | None) -> Any:
    try:
        predicted = jax.eval_shape(fn, *args)
    except Exception as e:
        raise fail("abstract_eval", f"{type(e).__name__}: {e}") from e
    if want is not None and not _same_type(predicted, want):
        raise fail("abstract_eval", f"predicted {_type(predicted)} but the reference computes "
                                    f"{_type(want)}")
    return predicted


def _check_lowering(fail: Fail, fn: Callable[..., Any], args: Sequence[Any], predicted: Any,
                    want: np.ndarray | None, hlo_op: str | None) -> Any:
    try:
        lowered = jax.jit(fn).lower(*args)
    except Exception as e:
        text = str(e)
        if "verifier" not in text:
            raise fail("lowering", f"{type(e).__name__}: {e}") from e
        # the verifier rejects a module whose returned value's type is not the declared
        # result type, which the abstract eval decides: the two disagree
        first = next((line.strip() for line in text.splitlines()[1:] if line.strip()), text)
        if "result type" in text and (want is None or not _same_type(predicted, want)):
            raise fail("abstract_eval", f"predicted {_type(predicted)}, but the lowering returns "
                                        f"another type (the MLIR verifier rejected the module: "
                                        f"{first})") from e
        raise fail("lowering", f"the MLIR verifier rejected the module: {first}") from e
    got, expected = jx.lowered_result_types(lowered, [(predicted.shape, predicted.dtype)])
    if got != expected:
        raise fail("abstract_eval", f"predicted {expected} but the lowered module returns {got}")
    text = lowered.as_text()
    if "custom_call" in text:
        raise fail("lowering", "the StableHLO module holds an opaque custom_call")
    if hlo_op is not None and f"stablehlo.{hlo_op}" not in text:
        raise fail("lowering", f"stablehlo.{hlo_op} not found in the lowered module:\n{text}")
    return lowered


# ----------------------------------------------------------------------------------------------
# Derivatives
# ----------------------------------------------------------------------------------------------

def _with_args(fn: Callable[..., Any], args: Sequence[Any], free: Sequence[int]
               ) -> Callable[..., Any]:
    """`fn` as a function of the operands at positions `free`, the others held fixed."""

    def g(*xs: Any) -> Any:
        full = list(args)
        for i, x in zip(free, xs):
            full[i] = x
        return fn(*full)

    return g


def _check_derivatives(prim: Primitive, fail: Fail, fn: Callable[..., Any],
                       args: Sequence[Any]) -> str | None:
    free = [i for i, a in enumerate(args) if _is_float(a)]
    if not free:
        return "no floating-point operand"
    g = _with_args(fn, args, free)
    primals = [args[i] for i in free]
    if prim.jvp is NOT_DIFFERENTIABLE:
        try:
            jax.jvp(g, primals, [np.ones_like(p) for p in primals])
        except DerivativeError:
            return None
        raise fail("jvp", "marked NOT_DIFFERENTIABLE but a derivative was computed")
    if prim.jvp is ZERO_DERIVATIVE:
        _, t = jax.jvp(g, primals, [np.ones_like(p) for p in primals])
        t = np.asarray(t)
        if t.dtype != np.dtype(jax.dtypes.float0) and np.any(t != 0):
            raise fail("jvp", "marked ZERO_DERIVATIVE but the tangent is nonzero")
        return None
    if not _is_float(jax.eval_shape(g, *primals)):
        return "integer or boolean output"
    with jax.enable_x64(True):
        wide = [np.asarray(p, np.float64) for p in primals]
        fixed = [np.asarray(a, np.float64) if _is_float(a) else a for a in args]
        g64 = _with_args(fn, fixed, free)
        # a narrow output dtype (float16) limits how well finite differences can agree
        narrow = np.dtype(jax.eval_shape(g64, *wide).dtype).itemsize < 4
        tol, eps = (5e-2, 3e-2) if narrow else (1e-5, 1e-4)
        try:
            check_grads(g64, wide, order=2, modes=("fwd", "rev"), atol=tol, rtol=tol, eps=eps)
        except AssertionError as e:
            raise fail("jvp", f"derivatives disagree with finite differences: {e}") from e
    return None


def _linear_in(fn: Callable[..., Any], args: Sequence[Any], idxs: Sequence[int]) -> bool:
    """Whether fn is linear in the operands at `idxs` jointly (others fixed), on random points."""
    rng = np.random.default_rng(0)
    g = _with_args(fn, args, idxs)
    us = [rng.standard_normal(args[i].shape).astype(args[i].dtype) for i in idxs]
    ws = [rng.standard_normal(args[i].shape).astype(args[i].dtype) for i in idxs]
    mixed = [np.asarray(2 * u - 3 * w, u.dtype) for u, w in zip(us, ws)]
    lhs = np.asarray(g(*mixed), np.float64)
    rhs = 2 * np.asarray(g(*us), np.float64) - 3 * np.asarray(g(*ws), np.float64)
    tol = _linear_tol(fn, args)
    return bool(np.allclose(lhs, rhs, rtol=tol, atol=tol))


def _linear_tol(fn: Callable[..., Any], args: Sequence[Any]) -> float:
    return 2e-2 if np.dtype(jax.eval_shape(fn, *args).dtype).itemsize < 4 else 1e-4


def _check_transpose(prim: Primitive, fail: Fail, fn: Callable[..., Any],
                     args: Sequence[Any]) -> str | None:
    if not prim.is_linear:
        return "not a linear primitive"
    if not _is_float(jax.eval_shape(fn, *args)):
        return "integer or boolean output"
    floats = [i for i, a in enumerate(args) if _is_float(a)]
    # linear in one operand (a product), or in all floating operands jointly (a sum)
    candidates = [[i] for i in floats] + ([floats] if len(floats) > 1 else [])
    linear = [c for c in candidates if _linear_in(fn, args, c)]
    if not linear:
        raise fail("transpose", "has a transpose rule but is linear in no operand")
    rng = np.random.default_rng(1)
    for idxs in linear:
        g = _with_args(fn, args, idxs)
        vs = [rng.standard_normal(args[i].shape).astype(args[i].dtype) for i in idxs]
        jv = np.asarray(g(*vs))
        ct = rng.standard_normal(jv.shape).astype(jv.dtype)
        try:
            jt_ct = jax.linear_transpose(g, *vs)(ct)
        except Exception as e:
            raise fail("transpose", f"operands {idxs}: {type(e).__name__}: {e}") from e
        lhs = float(np.vdot(ct.astype(np.float64), jv.astype(np.float64)))
        rhs = sum(float(np.vdot(np.asarray(t, np.float64), v.astype(np.float64)))
                  for t, v in zip(jt_ct, vs))
        tol = _linear_tol(fn, args)
        if not np.isclose(lhs, rhs, rtol=tol, atol=tol):
            raise fail("transpose", f"operands {idxs}: dot-product test <ct, J v> = {lhs:.6g} "
                                    f"but <J^T ct, v> = {rhs:.6g}")
    return None


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------

def _members(a: np.ndarray, rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """`_BATCH` members of a batch built from `a`, member 0 being `a`, and whether they differ."""
    kind = jx.kind_of(a.dtype)
    out = [a]
    if a.size == 0:
        return [a] * _BATCH, False
    for k in range(1, _BATCH):
        if kind in "fc":
            out.append((a * (1 + 0.25 * k) + 0.125 * k).astype(a.dtype))
        elif kind == "b":  # flip a random nonempty set of places
            flip = rng.random(a.shape) < 0.5
            flip.flat[rng.integers(a.size)] = True
            out.append(a ^ flip)
        elif kind in "iu":  # drawn from the operand's own range, so indices stay valid
            lo, hi = int(a.min()), int(a.max())
            if lo == hi:
                return [a] * _BATCH, False
            m = rng.integers(lo, hi + 1, a.shape).astype(a.dtype)
            if np.array_equal(m, a):  # differ in at least one place
                j = rng.integers(a.size)
                m.flat[j] = lo if a.flat[j] != lo else hi
            out.append(m)
        else:
            return [a] * _BATCH, False
    return out, True


def _axis_choices(ndim: int) -> list[int | None]:
    """Where an operand of rank `ndim` may carry the batch: 0, last, a middle axis, or none."""
    choices: list[int | None] = [0]
    if ndim >= 1:
        choices.append(ndim)
    middle = (ndim + 1) // 2
    if 0 < middle < ndim:
        choices.append(middle)
    return [*choices, None]


def in_axes_combinations(ranks: Sequence[int], cap: int = MAX_IN_AXES
                         ) -> list[tuple[int | None, ...]]:
    """The `in_axes` the batching check tries for operands of these ranks (see module doc)."""
    choices = [_axis_choices(r) for r in ranks]
    if math.prod(len(c) for c in choices) - 1 <= cap:
        return [c for c in itertools.product(*choices) if any(d is not None for d in c)]
    rng = np.random.default_rng(3)

    def draw(fixed: dict[int, int | None]) -> tuple[int | None, ...]:
        for _ in range(1000):
            row = tuple(fixed[j] if j in fixed else c[rng.integers(len(c))]
                        for j, c in enumerate(choices))
            if any(d is not None for d in row) and row not in combos:
                return row
        raise AssertionError("unreachable: the product has more combinations than the cap")

    combos: list[tuple[int | None, ...]] = [tuple(0 for _ in ranks),
                                            tuple(c[1] if len(c) > 2 else 0 for c in choices)]
    combos = list(dict.fromkeys(combos))
    for j, ch in enumerate(choices):  # every operand takes every candidate at least once
        for d in ch:
            if not any(row[j] == d for row in combos):
                combos.append(draw({j: d}))
    while len(combos) < cap:
        combos.append(draw({}))
    return combos


def _check_batching(fail: Fail, fn: Callable[..., Any], args: Sequence[np.ndarray],
                    tol: tuple[float, float], cap: int, report: CheckReport) -> None:
    rng = np.random.default_rng(2)
    members = []
    for i, a in enumerate(args):
        m, varied = _members(a, rng)
        members.append(m)
        if not varied:
            report.notes.append(f"batching: operand {i} ({_type(a)}) is the same in every "
                                f"member (it has a single value or no elements)")
    combos = in_axes_combinations([a.ndim for a in args], cap)
    # the loop: member k takes the k-th member of batched operands and the others whole; it
    # depends only on which operands are batched, not along which axis
    loops: dict[tuple[bool, ...], np.ndarray] = {}
    for axes in combos:
        key = tuple(d is not None for d in axes)
        if key not in loops:
            loops[key] = np.stack([np.asarray(fn(*[m[k] if b else a for a, m, b in
                                                   zip(args, members, key)]))
                                   for k in range(_BATCH)])
    inputs = [[a if d is None else np.stack(m, axis=d) for a, m, d in zip(args, members, axes)]
              for axes in combos]

    def all_combos(batched: list[list[Any]]) -> list[Any]:
        return [jax.vmap(fn, in_axes=axes)(*b) for axes, b in zip(combos, batched)]

    try:  # one compiled program for all combinations
        outs = _quick_jit(all_combos, inputs)
    except Exception as error:
        for axes, b in zip(combos, inputs):  # find the combination that fails
            try:
                _quick_jit(jax.vmap(fn, in_axes=axes), *b)
            except Exception as e:
                raise fail("batching", f"in_axes={axes}: {type(e).__name__}: {e}") from e
        raise fail("batching", f"in_axes={combos}: {type(error).__name__}: {error}") from error
    for axes, got in zip(combos, outs):
        key = tuple(d is not None for d in axes)
        _assert_close(fail, "batching", got, loops[key], tol, f"vmap with in_axes={axes} vs a "
                                                              "loop over the members")


# ----------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------

def _shard_spec(a: np.ndarray, n: int) -> PartitionSpec:
    for d, size in enumerate(a.shape):
        if size % n == 0 and size >= n:
            return PartitionSpec(*([None] * d), "x")
    return PartitionSpec()


def _check_sharding(prim: Primitive, fail: Fail, fn: Callable[..., Any], args: Sequence[Any],
                    unsharded: Any, tol: tuple[float, float]) -> str | None:
    n = len(jax.devices())
    if n < 2:
        return "only one device (set XLA_FLAGS=--xla_force_host_platform_device_count=8)"
    specs = [_shard_spec(a, n) for a in args]
    if all(s == PartitionSpec() for s in specs):
        return f"no operand has a dimension divisible by {n} devices"
    given = ", ".join(str(s) for s in specs)
    # explicit mesh axes: shardings are part of the types, the rule declares the output's
    explicit = jax.make_mesh((n,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(explicit):
        placed = [jax.device_put(a, NamedSharding(explicit, s)) for a, s in zip(args, specs)]
        try:
            out = _quick_jit(fn, *placed)
        except Exception as e:
            raise fail("sharding", f"explicitly sharded operands: {type(e).__name__}: {e}") from e
        declared = PartitionSpec(*jax.typeof(out).sharding.spec)
        if not out.sharding.is_equivalent_to(NamedSharding(explicit, declared), out.ndim):
            raise fail("sharding", f"the rule declared {declared} but the output is "
                                   f"{out.sharding.spec}")
        grads = _sharded_gradients(prim, fail, fn, placed)
    _assert_close(fail, "sharding", out, unsharded, tol, "explicitly sharded run vs unsharded")
    if grads is not None:
        want = _sharded_gradients(prim, fail, fn, list(args))
        assert want is not None
        for got, ref in zip(grads, want):
            _assert_close(fail, "sharding", got, ref, (1e-4, 1e-4),
                          "reverse mode with explicitly sharded operands vs unsharded")
    # automatic mesh axes: XLA propagates the operands' shardings through the lowered op with
    # no rule involved; the compiled executable's output sharding is what the rule must declare
    auto = jax.make_mesh((n,), ("x",), axis_types=(AxisType.Auto,))
    placed = [jax.device_put(a, NamedSharding(auto, s)) for a, s in zip(args, specs)]
    result = _run(fail, "sharding", lambda: _quick_jit(fn, *placed))
    lost = _lost_dims(result, declared)
    if lost:
        propagated = getattr(result.sharding, "spec", result.sharding)
        raise fail("sharding", f"for operands sharded as ({given}) the rule declared {declared}, "
                               f"but XLA's sharding propagation gives the compiled output "
                               f"{propagated} (dimensions {lost} differ)")
    _assert_close(fail, "sharding", result, unsharded, tol,
                  "run sharded over the host devices vs unsharded")
    return None


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _lost_dims(result: Any, declared: PartitionSpec) -> list[int]:
    """The dimensions XLA keeps sharded that the rule declares otherwise.

    Where XLA replicates a dimension the rule may still declare it sharded (an output that
    does not depend on the sharded operand is replicated by XLA, sliced at no cost in the
    rule's layout); a sharding the rule drops or changes costs communication, so it fails.
    """
    sharding = result.sharding
    if not isinstance(sharding, NamedSharding):  # another layout type: compare as a whole
        mesh = jax.make_mesh((len(jax.devices()),), ("x",), axis_types=(AxisType.Auto,))
        same = sharding.is_equivalent_to(NamedSharding(mesh, declared), result.ndim)
        return [] if same else list(range(result.ndim))
    pad = (None,) * result.ndim
    got, want = (tuple(spec) + pad for spec in (sharding.spec, declared))
    return [d for d in range(result.ndim) if _axes(got[d]) and _axes(got[d]) != _axes(want[d])]


def _sharded_gradients(prim: Primitive, fail: Fail, fn: Callable[..., Any],
                       args: list[Any]) -> list[Any] | None:
    """Gradients of sum(fn) with respect to the float operands (None if not applicable)."""
    free = [i for i, a in enumerate(args) if _is_float(a)]
    if isinstance(prim.jvp, _Marker) or not free or not _is_float(jax.eval_shape(fn, *args)):
        return None
    g = _with_args(fn, args, free)
    try:
        return list(_quick_jit(jax.grad(lambda *xs: g(*xs).sum(), tuple(range(len(free)))),
                               *[args[i] for i in free]))
    except Exception as e:
        raise fail("sharding", f"reverse mode with explicitly sharded operands: "
                               f"{type(e).__name__}: {e}") from e
