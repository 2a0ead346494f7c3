"""`check_primitive`: verify every rule of a primitive, built-in or user-defined.

    report = ap.testing.check_primitive(softplus_p, x)

runs, for the primitive applied to the given operands (and static params):
  abstract eval  the predicted shape and dtype equal the computed output's;
  jit            the compiled result equals the eager one;
  lowering       the StableHLO module holds the expected op and no opaque custom call;
  jvp / vjp      match finite differences to second order in both modes (float64);
  transpose      for every operand the op is linear in: <ct, J v> == <J^T ct, v>;
  vmap           equals a Python loop, for every in_axes combination (None included);
  sharding       a run sharded over the host devices equals the unsharded one, and so does a
                 run with explicitly sharded types, whose output carries the sharding that
                 the primitive's sharding rule derived.
It raises `PrimitiveCheckError` naming the rule that failed, and returns what it checked.
"""

from __future__ import annotations

import itertools
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
)

__all__ = ["CheckReport", "PrimitiveCheckError", "check_primitive"]

_BATCH = 3


class PrimitiveCheckError(AssertionError):
    """A rule of a primitive disagrees with what it should compute."""


@dataclass
class CheckReport:
    """The checks that ran (and why any were not applicable)."""

    primitive: str
    passed: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)


def check_primitive(op: Primitive | str, *args: Any, hlo_op: str | None = None,
                    rtol: float | None = None, atol: float | None = None,
                    **params: Any) -> CheckReport:
    """Verify every rule of `op` on operands `args` with static `params`; see module doc."""
    prim = get_primitive(op) if isinstance(op, str) else op
    args = tuple(np.asarray(a) for a in args)
    report = CheckReport(prim.name)

    def fn(*xs: Any) -> Any:
        return prim.bind(*xs, **params)

    def fail(rule: str, detail: str) -> PrimitiveCheckError:
        return PrimitiveCheckError(f"check_primitive({prim.name}): {rule} rule failed: {detail}")

    tol = _tolerances(args, rtol, atol)
    eager = _run(fail, "impl", fn, args)
    _check_abstract_eval(fail, fn, args, eager)
    report.passed.append("abstract_eval")
    _assert_close(fail, "jit", jax.jit(fn)(*args), eager, tol, "jit result vs eager result")
    report.passed.append("jit")
    _check_lowering(fail, fn, args, hlo_op)
    report.passed.append("lowering")
    for name, outcome in (("jvp", _check_derivatives(prim, fail, fn, args)),
                          ("transpose", _check_transpose(prim, fail, fn, args))):
        if outcome is None:
            report.passed.append(name)
        else:
            report.not_applicable[name] = outcome
    _check_vmap(fail, fn, args, tol)
    report.passed.append("vmap")
    outcome = _check_sharding(prim, fail, fn, args, eager, tol)
    if outcome is None:
        report.passed.append("sharding")
    else:
        report.not_applicable["sharding"] = outcome
    return report


# ----------------------------------------------------------------------------------------------

def _run(fail: Callable[..., Exception], rule: str, fn: Callable[..., Any], args: Sequence[Any]
         ) -> Any:
    try:
        return fn(*args)
    except Exception as e:  # a crash in a rule is that rule's failure
        raise fail(rule, f"{type(e).__name__}: {e}") from e


def _tolerances(args: Sequence[Any], rtol: float | None, atol: float | None) -> tuple[float, float]:
    low = any(np.dtype(a.dtype).itemsize <= 4 and jx.kind_of(a.dtype) == "f" for a in args)
    return (rtol if rtol is not None else (2e-5 if low else 1e-10),
            atol if atol is not None else (2e-5 if low else 1e-10))


def _assert_close(fail: Callable[..., Exception], rule: str, got: Any, want: Any,
                  tol: tuple[float, float], what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise fail(rule, f"{what}: got {got.dtype}{list(got.shape)}, "
                         f"expected {want.dtype}{list(want.shape)}")
    if jx.kind_of(want.dtype) in "biu" or want.dtype == np.dtype(jax.dtypes.float0):
        ok = np.array_equal(got, want)
    else:
        ok = np.allclose(got, want, rtol=tol[0], atol=tol[1], equal_nan=True)
    if not ok:
        err = np.max(np.abs(got.astype(float) - want.astype(float))) if got.size else 0.0
        raise fail(rule, f"{what}: values differ (max abs error {err:.3g})")


def _check_abstract_eval(fail: Callable[..., Exception], fn: Callable[..., Any],
                         args: Sequence[Any], eager: Any) -> None:
    try:
        predicted = jax.eval_shape(fn, *args)
    except Exception as e:
        raise fail("abstract_eval", f"{type(e).__name__}: {e}") from e
    if predicted.shape != eager.shape or predicted.dtype != eager.dtype:
        raise fail("abstract_eval", f"predicted {predicted.dtype}{list(predicted.shape)} but the "
                                    f"computed output is {eager.dtype}{list(eager.shape)}")


def _check_lowering(fail: Callable[..., Exception], fn: Callable[..., Any], args: Sequence[Any],
                    hlo_op: str | None) -> None:
    text = jax.jit(fn).lower(*args).as_text()
    if "custom_call" in text:
        raise fail("lowering", "the StableHLO module holds an opaque custom_call")
    if hlo_op is not None and f"stablehlo.{hlo_op}" not in text:
        raise fail("lowering", f"stablehlo.{hlo_op} not found in the lowered module:\n{text}")


def _is_float(a: Any) -> bool:
    return jx.kind_of(a.dtype) == "f"


def _with_args(fn: Callable[..., Any], args: Sequence[Any], free: Sequence[int]
               ) -> Callable[..., Any]:
    """`fn` as a function of the operands at positions `free`, the others held fixed."""

    def g(*xs: Any) -> Any:
        full = list(args)
        for i, x in zip(free, xs):
            full[i] = x
        return fn(*full)

    return g


def _check_derivatives(prim: Primitive, fail: Callable[..., Exception], fn: Callable[..., Any],
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


def _check_transpose(prim: Primitive, fail: Callable[..., Exception], fn: Callable[..., Any],
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


def _batched(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th member of a batch built from `a` (floats perturbed, other dtypes repeated)."""
    if jx.kind_of(a.dtype) == "f":
        return (a * (1 + 0.25 * k) + 0.125 * k).astype(a.dtype)
    return a


def _check_vmap(fail: Callable[..., Exception], fn: Callable[..., Any], args: Sequence[Any],
                tol: tuple[float, float]) -> None:
    members = [[_batched(a, k) for k in range(_BATCH)] for a in args]
    combos = [c for c in itertools.product([None, 0], repeat=len(args)) if any(
        d is not None for d in c)]
    combos.append(tuple(a.ndim for a in args))  # every operand batched along its last axis
    for axes in combos:
        batched = [a if d is None else np.stack(m, axis=d)
                   for a, m, d in zip(args, members, axes)]
        # the loop: member k takes the k-th slice of batched operands, the others whole
        expect = np.stack([np.asarray(fn(*[a if d is None else m[k]
                                           for a, m, d in zip(args, members, axes)]))
                           for k in range(_BATCH)])
        try:
            got = jax.vmap(fn, in_axes=axes)(*batched)
        except Exception as e:
            raise fail("batching", f"in_axes={axes}: {type(e).__name__}: {e}") from e
        _assert_close(fail, "batching", got, expect, tol, f"vmap with in_axes={axes} vs a loop")


def _shard_spec(a: np.ndarray, n: int) -> PartitionSpec:
    for d, size in enumerate(a.shape):
        if size % n == 0 and size >= n:
            return PartitionSpec(*([None] * d), "x")
    return PartitionSpec()


def _check_sharding(prim: Primitive, fail: Callable[..., Exception], fn: Callable[..., Any],
                    args: Sequence[Any], eager: Any, tol: tuple[float, float]) -> str | None:
    n = len(jax.devices())
    if n < 2:
        return "only one device (set XLA_FLAGS=--xla_force_host_platform_device_count=8)"
    specs = [_shard_spec(a, n) for a in args]
    if all(s == PartitionSpec() for s in specs):
        return f"no operand has a dimension divisible by {n} devices"
    mesh = jax.make_mesh((n,), ("x",), axis_types=(AxisType.Auto,))
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    _assert_close(fail, "sharding", jax.jit(fn)(*placed), eager, tol,
                  f"run sharded over {n} devices vs unsharded")
    explicit = jax.make_mesh((n,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(explicit):
        placed = [jax.device_put(a, NamedSharding(explicit, s)) for a, s in zip(args, specs)]
        try:
            out = jax.jit(fn)(*placed)
        except Exception as e:
            raise fail("sharding", f"explicitly sharded operands: {type(e).__name__}: {e}") from e
        predicted = jax.typeof(out).sharding.spec  # what the sharding rule derived
        if tuple(predicted) != tuple(out.sharding.spec):
            raise fail("sharding", f"rule derived {predicted} but XLA produced "
                                   f"{out.sharding.spec}")
        grads = _sharded_gradients(prim, fail, fn, placed)
    _assert_close(fail, "sharding", out, eager, tol, "explicitly sharded run vs unsharded")
    if grads is not None:
        want = _sharded_gradients(prim, fail, fn, list(args))
        assert want is not None
        for got, ref in zip(grads, want):
            _assert_close(fail, "sharding", got, ref, (1e-4, 1e-4),
                          "reverse mode with explicitly sharded operands vs unsharded")
    return None


def _sharded_gradients(prim: Primitive, fail: Callable[..., Exception], fn: Callable[..., Any],
                       args: list[Any]) -> list[Any] | None:
    """Gradients of sum(fn) with respect to the float operands (None if not applicable)."""
    free = [i for i, a in enumerate(args) if _is_float(a)]
    if isinstance(prim.jvp, _Marker) or not free or not _is_float(jax.eval_shape(fn, *args)):
        return None
    g = _with_args(fn, args, free)
    try:
        return list(jax.jit(jax.grad(lambda *xs: g(*xs).sum(), tuple(range(len(free)))))(
            *[args[i] for i in free]))
    except Exception as e:
        raise fail("sharding", f"reverse mode with explicitly sharded operands: "
                               f"{type(e).__name__}: {e}") from e
