"""`check_primitive` can fail: one planted wrong rule per check, each caught by that check.

Every primitive here is a throwaway (`test_cp.*`), correct in all rules but the planted one,
so each test also shows the other checks let it through.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin.extend import hlo
from adplugin.testing import PrimitiveCheckError, check_primitive, in_axes_combinations

rng = np.random.default_rng(7)
X = rng.standard_normal((8, 3)).astype(np.float32)


def negate_lowering(ctx: Any, x: Any) -> Any:
    return hlo.negate(x)


def negate_jvp(g: Any, out: Any, x: Any) -> Any:
    return ap.negative(g)


def negate_transpose(ct: Any, x: Any) -> list[Any]:
    return [ap.negative(ct)]


def negate(name: str, **rules: Any) -> ap.Primitive:
    """A negation primitive with all rules right except those given."""
    defaults: dict[str, Any] = {"lowering": negate_lowering, "jvp": (negate_jvp,),
                                "transpose": negate_transpose, "elementwise": True}
    return ap.define_primitive(name, **{**defaults, **rules})


def test_a_correct_primitive_passes_every_check() -> None:
    report = check_primitive(negate("test_cp.negate"), X, reference=jnp.negative)
    assert report.passed == ["abstract_eval", "lowering", "impl", "jit", "reference", "jvp",
                             "transpose", "batching", "sharding"]
    assert not report.not_applicable and not report.notes


# --- primal values -----------------------------------------------------------------------------

def test_a_wrong_primal_value_is_caught_by_the_reference() -> None:
    # lowered as cos with the JVP of cos: every rule agrees with every other one
    cos_as_sin = ap.define_primitive(
        "test_cp.cos_as_sin", lowering=lambda ctx, x: hlo.cosine(x),
        jvp=(lambda g, out, x: ap.multiply(g, ap.negative(ap.sin(x))),), elementwise=True)
    report = check_primitive(cos_as_sin, X)
    assert "reference" in report.not_applicable and "jvp" in report.passed
    with pytest.raises(PrimitiveCheckError, match="reference check failed") as caught:
        check_primitive(cos_as_sin, X, reference=jnp.sin)
    assert caught.value.check == "reference"


def test_an_eager_impl_unlike_the_lowering_is_caught_by_jit() -> None:
    wrong = negate("test_cp.impl_differs")
    wrong.jax_primitive.def_impl(lambda x: jnp.negative(x) + 1)
    with pytest.raises(PrimitiveCheckError, match="jit check failed: the jitted result vs the "
                                                  "eager impl"):
        check_primitive(wrong, X, reference=jnp.negative)


# --- abstract eval ----------------------------------------------------------------------------

def test_a_wrong_abstract_shape_is_caught_by_abstract_eval() -> None:
    # the MLIR verifier rejects the module (negate returns 8x3, the function declares 9x3)
    wrong = negate("test_cp.wrong_shape", abstract_eval=lambda x: ap.ShapeDtype(
        (x.shape[0] + 1, *x.shape[1:]), x.dtype))
    with pytest.raises(PrimitiveCheckError, match=r"abstract_eval check failed: predicted "
                                                  r"float32\[9, 3\].*verifier"):
        check_primitive(wrong, X)
    with pytest.raises(PrimitiveCheckError, match="abstract_eval check failed"):
        check_primitive(wrong, X, reference=jnp.negative)


def test_a_wrong_abstract_dtype_is_caught_by_abstract_eval() -> None:
    wrong = negate("test_cp.wrong_dtype",
                   abstract_eval=lambda x: ap.ShapeDtype(x.shape, np.dtype(np.float16)))
    with pytest.raises(PrimitiveCheckError, match=r"abstract_eval check failed: predicted "
                                                  r"float16\[8, 3\].*verifier"):
        check_primitive(wrong, X)


def test_a_wrong_dtype_the_lowering_agrees_with_is_caught_by_the_reference_type() -> None:
    # the lowering converts to whatever the abstract eval declares: the module verifies, runs,
    # and every rule is consistent; only the reference's float32 shows float16 is wrong
    wrong = negate("test_cp.wrong_dtype_consistent",
                   abstract_eval=lambda x: ap.ShapeDtype(x.shape, np.dtype(np.float16)),
                   lowering=lambda ctx, x: hlo.convert(ctx.out_type(), hlo.negate(x)))
    with pytest.raises(PrimitiveCheckError, match=r"abstract_eval check failed: predicted "
                                                  r"float16\[8, 3\] but the reference computes "
                                                  r"float32\[8, 3\]"):
        check_primitive(wrong, X, reference=jnp.negative)


def test_a_lowering_of_the_wrong_type_is_blamed_when_the_reference_agrees() -> None:
    wrong = negate("test_cp.lowering_wrong_type", lowering=lambda ctx, x: hlo.convert(
        ap.extend.ir.RankedTensorType.get([8, 3], ap.extend.ir.F16Type.get()), hlo.negate(x)))
    with pytest.raises(PrimitiveCheckError, match="lowering check failed: the MLIR verifier"):
        check_primitive(wrong, X, reference=jnp.negative)


# --- derivatives --------------------------------------------------------------------------------

def test_a_wrong_jvp_is_caught() -> None:
    wrong = ap.define_primitive(
        "test_cp.wrong_sin", lowering=lambda ctx, x: hlo.sine(x),
        jvp=(lambda g, out, x: ap.multiply(g, ap.sin(x)),), elementwise=True)
    with pytest.raises(PrimitiveCheckError, match="jvp check failed"):
        check_primitive(wrong, X, reference=jnp.sin)


def test_a_wrong_transpose_is_caught() -> None:
    wrong = ap.define_primitive(
        "test_cp.wrong_double", lowering=lambda ctx, x: hlo.add(x, x),
        jvp=(lambda g, out, x: ap.add(g, g),), transpose=lambda ct, x: [ct],
        elementwise=True)
    with pytest.raises(PrimitiveCheckError, match="transpose check failed"):
        check_primitive(wrong, X, reference=lambda x: 2 * x)


# --- batching -----------------------------------------------------------------------------------

def _scale_lowering(ctx: Any, x: Any, n: Any) -> Any:
    return hlo.multiply(x, hlo.convert(ctx.out_type(), n))


def _scale_batching_member0(args: Any, dims: Any) -> tuple[Any, int]:
    # wrong: a batched integer operand is read at member 0 only, for every member
    x, n = args
    xd, nd = dims
    size = (x.shape[xd] if xd is not None else n.shape[nd])
    if nd is not None:
        n = jnp.take(n, 0, axis=nd)
    x = jnp.broadcast_to(x, (size, *x.shape)) if xd is None else jnp.moveaxis(x, xd, 0)
    return scale_p.bind(x, jnp.broadcast_to(n, x.shape)), 0


scale_p = ap.define_primitive(
    "test_cp.scale_by_int", lowering=_scale_lowering,
    abstract_eval=lambda x, n: ap.ShapeDtype(x.shape, x.dtype),
    jvp=(lambda g, out, x, n: ap.multiply(g, ap.astype(n, g.dtype)), None),
    batching=_scale_batching_member0, sharding=lambda specs, x, n: specs[0])


def scale_reference(x: Any, n: Any) -> Any:
    return x * n.astype(x.dtype)


def test_batching_that_reads_one_members_integers_is_caught() -> None:
    n = rng.integers(1, 6, (8, 3)).astype(np.int32)
    with pytest.raises(PrimitiveCheckError, match=r"batching check failed: vmap with "
                                                  r"in_axes=\((0|1|2|None), (0|1|2)\)"):
        check_primitive(scale_p, X, n, reference=scale_reference)
    # the bug is invisible when the integers cannot vary, and the report says so
    report = check_primitive(scale_p, X, np.full((8, 3), 2, np.int32), reference=scale_reference)
    assert "batching" in report.passed and "operand 1 (int32[8, 3])" in report.notes[0]


def _negate_batching_middle_flipped(args: Any, dims: Any) -> tuple[Any, int]:
    (x,), (d,) = args, dims
    if 0 < d < x.ndim - 1:  # wrong only for a middle batch axis: members come out reversed
        x = jnp.flip(x, d)
    return middle_p.bind(x), d


middle_p = negate("test_cp.middle_axis", batching=_negate_batching_middle_flipped)


def test_batching_wrong_only_along_a_middle_axis_is_caught() -> None:
    with pytest.raises(PrimitiveCheckError, match=r"batching check failed: vmap with "
                                                  r"in_axes=\(1,\)"):
        check_primitive(middle_p, X, reference=jnp.negative)


def test_in_axes_cover_every_axis_of_every_operand() -> None:
    assert in_axes_combinations([0, 1]) == [(0, 0), (0, 1), (0, None), (None, 0), (None, 1)]
    ranks = [2, 3, 1]  # 4 * 4 * 3 - 1 = 47 combinations: more than the cap
    combos = in_axes_combinations(ranks, cap=12)
    assert len(combos) == 12 == len(set(combos))
    assert combos[:2] == [(0, 0, 0), (2, 3, 1)]  # all along axis 0, all along the last
    assert all(any(d is not None for d in c) for c in combos)
    for j, choices in enumerate([{None, 0, 1, 2}, {None, 0, 2, 3}, {None, 0, 1}]):
        assert {c[j] for c in combos} == choices, j


def test_operands_that_cannot_vary_are_reported() -> None:
    ones = np.ones((8, 3), np.int32)
    report = check_primitive("add", ones, ones, reference=jnp.add)
    assert "batching" in report.passed
    assert len(report.notes) == 2 and "operand 0 (int32[8, 3])" in report.notes[0]


# --- sharding -----------------------------------------------------------------------------------

def test_a_sharding_rule_declaring_a_sharded_output_replicated_is_caught() -> None:
    wrong = negate("test_cp.replicated", sharding=lambda specs, x: (None,) * len(x.shape))
    with pytest.raises(PrimitiveCheckError, match=r"sharding check failed: .* the rule declared "
                                                  r"P\(None, None\), but XLA's "
                                                  r"sharding propagation .*'x'"):
        check_primitive(wrong, X, reference=jnp.negative)


# --- what check_primitive accepts --------------------------------------------------------------

def test_a_public_wrapper_is_checked_through_the_primitive_it_binds() -> None:
    report = check_primitive(ap.tanh, X, reference=jnp.tanh)
    assert report.primitive == "tanh" and "reference" in report.passed
    # the reference is called as the wrapper is; the primitive gets the params it was bound with
    report = check_primitive(ap.sum, X, axis=1, reference=jnp.sum)
    assert report.primitive == "reduce_sum" and "reference" in report.passed
    with pytest.raises(PrimitiveCheckError, match="reference check failed"):
        check_primitive(ap.sum, X, axis=1, reference=lambda x, axis: jnp.sum(2 * x, axis=axis))


def test_a_wrapper_binding_several_primitives_is_refused() -> None:
    with pytest.raises(TypeError, match=r"binds \['broadcast_in_dim', 'add'\].*ap.get_primitive"):
        check_primitive(lambda x: ap.add(x, 1.0), X)
    with pytest.raises(TypeError, match="binds none"):
        check_primitive(jnp.tanh, X)
    with pytest.raises(TypeError, match="operand 0 of tanh is computed inside the wrapper"):
        check_primitive(lambda x: ap.tanh(jax.lax.exp(x)), X)
    with pytest.raises(TypeError, match="op must be an adplugin Primitive"):
        check_primitive(3, X)  # type: ignore[arg-type]
