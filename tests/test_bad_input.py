"""Bad input that once crashed deep inside or answered wrongly: each class gets a clear error
(the op, what was given, what was expected, the fix) or the right answer, with jax.numpy as the
reference for values and dtypes."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin._errors import AdpluginError, ExportError
from adplugin.ir.deferred import DeferredTensor
from adplugin.lowering import serialized
from adplugin.transforms import simplify as simplify_module


def assert_clear(error: BaseException, op: str) -> None:
    text = str(error)
    assert f"ap.{op}" in text, text
    assert "Given:" in text and "Expected:" in text and "Fix:" in text, text


# --- placeholders: None and -1 dims defer the shape; anything else not a size is refused ------

@pytest.mark.parametrize("unknown", [None, -1])
def test_placeholder_with_an_unknown_dimension_runs_per_fed_shape(unknown: Any) -> None:
    with ap.Graph() as g:
        x = ap.placeholder((unknown, 3), name="x")
        y = ap.sum(ap.square(x), axis=1)
    assert isinstance(x, DeferredTensor) and x.shape == (None, 3)
    for rows in (1, 4):
        v = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
        np.testing.assert_allclose(g.run(y, {x: v}), jnp.sum(jnp.square(v), axis=1))


@pytest.mark.parametrize("shape", [(2.5, 3), ("a", 3), (True, 3), (-2, 3), (np.float32(2),), 3,
                                   "ab"])
def test_placeholder_dims_that_are_not_sizes_are_refused(shape: Any) -> None:
    with ap.Graph(), pytest.raises(TypeError) as info:
        ap.placeholder(shape)
    assert_clear(info.value, "placeholder")


@pytest.mark.parametrize("dtype", ["floaty", np.complex64, object])
def test_placeholder_dtypes_adplugin_cannot_compute_are_refused(dtype: Any) -> None:
    with ap.Graph(), pytest.raises(TypeError) as info:
        ap.placeholder((2,), dtype)
    assert_clear(info.value, "placeholder")


def test_numpy_integer_dims_are_sizes() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((np.int64(2), np.int32(3)))
    assert x.shape == (2, 3) and g.run(ap.sum(x), {x: np.ones((2, 3), np.float32)}) == 6


# --- gradients with empty ys or xs: TensorFlow's answers ------------------------------------

def test_gradients_with_empty_ys_or_xs_give_tensorflows_answers() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        i = ap.placeholder((2,), np.int32, name="i")
        y = ap.sum(ap.sin(x))
        assert ap.gradients(y, []) == []
        assert ap.gradients([], []) == []
        assert ap.gradients([], [x]) == [None]
        (zero,) = ap.gradients([], [x], unconnected_gradients="zero")
        assert ap.forward_gradients([], [x], [np.ones(3, np.float32)]) == []
        (no_direction,) = ap.forward_gradients(y, [], [])
        with pytest.raises(AdpluginError, match="non-floating"):
            ap.gradients([], [i])  # integer sources are refused whatever the ys
    v = np.array([0.5, 1.0, 2.0], np.float32)
    out = g.run([zero, no_direction], {x: v})
    np.testing.assert_array_equal(out[0], np.zeros(3, np.float32))
    assert out[0].dtype == np.float32 and out[1] == 0


# --- weights and tangents of another dtype or count --------------------------------------------

def test_grad_ys_and_tangents_convert_same_kind_and_refuse_the_rest() -> None:
    v = np.array([0.5, 1.0, 2.0], np.float32)
    ref_grad = jax.grad(lambda u: 3.0 * jnp.sum(jnp.sin(u)))(v)
    ref_jvp = jax.jvp(lambda u: jnp.sum(jnp.sin(u)), (v,), (np.ones(3, np.float32),))[1]
    with jax.enable_x64(True), ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        y = ap.sum(ap.sin(x))
        (g64,) = ap.gradients(y, [x], grad_ys=np.float64(3.0))  # float64 weight, f32 y
        (gint,) = ap.gradients(y, [x], grad_ys=np.int32(3))
        (t64,) = ap.forward_gradients(y, [x], [np.ones(3, np.float64)])
        assert g64.dtype == gint.dtype == t64.dtype == np.float32
        values = g.run([g64, gint, t64], {x: v})
        for bad, op in [(lambda: ap.gradients(y, [x], grad_ys=np.complex64(1)), "gradients"),
                        (lambda: ap.forward_gradients(y, [x], [np.ones(3, np.complex64)]),
                         "forward_gradients"),
                        (lambda: ap.forward_gradients(y, [x], ["abc"]), "forward_gradients")]:
            with pytest.raises(TypeError) as info:
                bad()
            assert_clear(info.value, op)
        for bad, op in [(lambda: ap.gradients(y, [x], grad_ys=np.ones(3)), "gradients"),
                        (lambda: ap.gradients([y], [x], grad_ys=[1.0, 1.0]), "gradients"),
                        (lambda: ap.forward_gradients(y, [x], []), "forward_gradients"),
                        (lambda: ap.forward_gradients(y, [x], [v, v]), "forward_gradients")]:
            with pytest.raises(ValueError) as info:
                bad()
            assert_clear(info.value, op)
    np.testing.assert_allclose(values[0], ref_grad, rtol=1e-6)
    np.testing.assert_allclose(values[1], ref_grad, rtol=1e-6)
    np.testing.assert_allclose(values[2], ref_jvp, rtol=1e-6)


# --- feeding an intermediate tensor cuts the graph there ---------------------------------------

def test_feeding_an_intermediate_tensor_needs_nothing_upstream() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        unused = ap.placeholder((3,), name="unused_upstream")
        z = ap.exp(x) + ap.sin(unused)  # upstream of the cut: neither placeholder is fed
        w = ap.sum(z * z)
    xv, uv = np.array([0.1, 0.2, 0.3], np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    full_z, full_w = g.run([z, w], {x: xv, unused: uv})
    np.testing.assert_allclose(g.run(w, {z: full_z}), full_w, rtol=1e-6)
    other = full_z + 1  # the fed value is what counts (the cut is not ignored)
    np.testing.assert_allclose(g.run(w, {z: other}), np.sum(other * other), rtol=1e-6)
    with pytest.raises(ap.GraphError, match="was not fed"):
        g.run(w, {x: xv})  # without the cut the upstream placeholder is still needed


# --- NumPy scalars are strongly typed in every engine, as in jax.numpy -------------------------

def _engines(fn: Callable[[Any], Any], x: np.ndarray) -> dict[str, Any]:
    """fn's result dtype (and value) in each engine."""
    out: dict[str, Any] = {"eager": fn(x), "jit": jax.jit(fn)(x)}
    with ap.Graph() as g:
        p = ap.placeholder(x.shape, x.dtype)
        t = fn(p)
    out["graph"] = g.run(t, {p: x})
    out["graph tensor"] = t  # its static dtype must agree too
    v = ap.Variable(x)
    with ap.GradientTape():
        out["tape"] = fn(v)
    out["trace"] = ap.trace(fn, x)(x)
    return out


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("scalar", [np.float64(2.5), np.float32(2.5), 2.5, np.int64(3), 3,
                                    np.float16(2.5)])
def test_numpy_scalars_promote_as_in_jax_numpy_in_every_engine(x64: bool, scalar: Any) -> None:
    with jax.enable_x64(x64):
        x = np.array([1.0, 2.0, 3.0], np.float32)
        xi = np.array([1, 2, 3], np.int32)
        for operand in (x, xi):
            ref = jnp.multiply(operand, scalar)
            for engine, got in _engines(lambda a: ap.multiply(a, scalar), operand).items():
                assert np.dtype(got.dtype) == ref.dtype, (engine, got.dtype, ref.dtype)
                if engine != "graph tensor":
                    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, err_msg=engine)


# --- complex operands: refused by every op, naming that op --------------------------------------

C = (np.arange(6).reshape(2, 3) + 1j).astype(np.complex64)
F = np.ones((2, 3), np.float32)
COMPLEX_CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("add", lambda: ap.add(F, C)), ("add", lambda: ap.add(F, 1j)),
    ("add", lambda: ap.add(C, C)), ("multiply", lambda: ap.multiply(C, 2.0)),
    ("sin", lambda: ap.sin(C)), ("exp", lambda: ap.exp(C)), ("sum", lambda: ap.sum(C)),
    ("mean", lambda: ap.mean(C)), ("max", lambda: ap.max(C)),
    ("logsumexp", lambda: ap.logsumexp(C)), ("matmul", lambda: ap.matmul(C, C.T)),
    ("where", lambda: ap.where(F > 0, C, F)), ("equal", lambda: ap.equal(C, F)),
    ("maximum", lambda: ap.maximum(C, F)), ("reshape", lambda: ap.reshape(C, (3, 2))),
    ("concatenate", lambda: ap.concatenate([F, C])), ("astype", lambda: ap.astype(C, "float32")),
    ("astype", lambda: ap.astype(F, "complex64")),
]


@pytest.mark.parametrize("name, call", COMPLEX_CALLS, ids=[f"{c[0]}{i}"
                                                           for i, c in enumerate(COMPLEX_CALLS)])
def test_complex_operands_get_the_ops_own_clear_error(name: str, call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError) as info:
        call()
    assert_clear(info.value, name)
    with ap.Graph(), pytest.raises(TypeError) as info:  # the same in a graph being built
        call()
    assert_clear(info.value, name)


def test_complex_refusal_also_holds_under_jit() -> None:
    with pytest.raises(TypeError, match=r"ap\.add: complex operands"):
        jax.jit(lambda a, b: ap.add(a, b))(F, C)


# --- variables keep their dtype: truncating assignments are refused -----------------------------

def test_assignments_that_would_truncate_are_refused() -> None:
    i = ap.Variable(np.int32(3), name="count")
    f = ap.Variable(np.float32(1.5), name="w")
    for bad in (lambda: i.assign(1.5), lambda: i.assign(np.float32(2.5)),
                lambda: i.assign_add(0.5), lambda: f.assign(1 + 2j),
                lambda: f.assign(np.ones((), np.complex64))):
        with pytest.raises(TypeError) as info:
            bad()
        assert_clear(info.value, "Variable")
        assert "truncated" in str(info.value)
    assert int(i.value) == 3 and float(f.value) == 1.5  # untouched
    i.assign(7)
    i.assign_add(np.int64(1))  # same kind: converted, as jnp.asarray(v, int32) would
    f.assign(np.float64(0.25))
    f.assign(2)
    assert (int(i.value), i.dtype) == (8, np.int32) and (float(f.value), f.dtype) == (2.0,
                                                                                      np.float32)
    with ap.Graph() as g:
        with pytest.raises(TypeError, match="truncated"):
            i.assign(2.7)
        op = i.assign(5)
    g.run(op)
    assert int(i.value) == 5


def test_optimizers_refuse_integer_variables_and_complex_gradients() -> None:
    i = ap.Variable(np.int32(3), name="count")
    f = ap.Variable(np.ones(2, np.float32), name="w")
    for opt in (ap.optimizers.SGD(0.1), ap.optimizers.Adam(0.1)):
        with pytest.raises(TypeError) as info:
            opt.apply_gradients([(np.float32(1.0), i)])
        assert_clear(info.value, "Optimizer.apply_gradients")
        with pytest.raises(TypeError) as info:
            opt.apply_gradients([(np.ones(2, np.complex64), f)])
        assert_clear(info.value, "Optimizer.apply_gradients")
    assert int(i.value) == 3 and np.array_equal(f.value, np.ones(2, np.float32))


# --- constant folding computes what XLA computes for the same graph unfolded ---------------------

INT_MIN = np.iinfo(np.int32).min
FOLD_CASES: dict[str, tuple[str, list[np.ndarray], dict[str, Any]]] = {
    "int div": ("div", [np.array([7, -7, 7, -7, 0, 5, INT_MIN, INT_MIN, -9], np.int32),
                        np.array([2, 2, -2, -2, 0, 0, -1, 1, 0], np.int32)], {}),
    "uint div": ("div", [np.array([7, 0, 9], np.uint32), np.array([0, 0, 2], np.uint32)], {}),
    "int8 div": ("div", [np.array([-128, 127, -5], np.int8), np.array([-1, 0, 3], np.int8)], {}),
    "float div": ("div", [np.array([1, -1, 0, 3], np.float32), np.array([0, 0, 0, 2], np.float32)],
                  {}),
    "nan to int": ("convert_element_type", [np.array([np.nan, np.inf, -np.inf, 3e10, -3e10, 2.7,
                                                      -2.7], np.float32)],
                   {"new_dtype": np.dtype(np.int32), "weak_type": False}),
    "float to uint8": ("convert_element_type", [np.array([np.nan, 300, -3, 2.7, -0.5, 255.9],
                                                         np.float32)],
                       {"new_dtype": np.dtype(np.uint8), "weak_type": False}),
    "finite to int": ("convert_element_type", [np.array([2.7, -2.7, 0.0, 1e6], np.float32)],
                      {"new_dtype": np.dtype(np.int32), "weak_type": False}),
    "int wraps": ("convert_element_type", [np.array([300, -200, 127], np.int32)],
                  {"new_dtype": np.dtype(np.int8), "weak_type": False}),
    "int overflow": ("add", [np.array([2**31 - 1], np.int32), np.array([1], np.int32)], {}),
}


def _folded_and_unfolded(name: str, args: list[np.ndarray], params: dict[str, Any]
                         ) -> tuple[Any, Any, int]:
    """The op on constants (folded by simplify), on fed placeholders (computed by XLA), and
    how many primitive nodes remain after simplification of the constant version."""
    prim = ap.get_primitive(name)
    with ap.Graph() as g:
        consts = [ap.constant(a) for a in args]
        folded = prim.bind(*consts, **params)
        feeds = [ap.placeholder(a.shape, a.dtype) for a in args]
        unfolded = prim.bind(*feeds, **params)
    small, _ = ap.simplify(g, [folded])
    out = g.run([folded, unfolded], dict(zip(feeds, args)))
    return out[0], out[1], simplify_module.op_count(small)


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_constant_folding_agrees_with_xla(case: str) -> None:
    name, args, params = FOLD_CASES[case]
    folded, unfolded, _ = _folded_and_unfolded(name, args, params)
    assert folded.dtype == unfolded.dtype
    np.testing.assert_array_equal(folded, unfolded)


def test_integer_division_is_folded_and_the_check_catches_numpys_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, args, params = FOLD_CASES["int div"]
    folded, unfolded, ops_left = _folded_and_unfolded(name, args, params)
    assert ops_left == 0  # folded, so the comparison above exercised the folding rule
    # the rule folding used to have (NumPy's true division, then a cast) disagrees with XLA
    monkeypatch.setitem(simplify_module._NUMPY_FOLD, "div",
                        lambda x, y: np.divide(x, y).astype(x.dtype))
    with np.errstate(all="ignore"):
        bad, unfolded, _ = _folded_and_unfolded(name, args, params)
    assert not np.array_equal(bad, unfolded)


# --- corrupt serialized exports ----------------------------------------------------------------

def _exported() -> Any:
    with ap.Graph() as g:
        a = ap.placeholder((3,), name="a")
        f = ap.sum(a * a)
    return g.export(f, {a: np.ones(3, np.float32)})


def test_serialized_export_round_trips() -> None:
    blob = ap.serialize_export(_exported())
    v = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(ap.deserialize_export(blob).call(v)[0], np.sum(v * v))
    bare = bytes(_exported().serialize())  # JAX's own bytes load too
    np.testing.assert_allclose(ap.deserialize_export(bare).call(v)[0], np.sum(v * v))


def test_corrupt_or_foreign_exports_get_a_clear_error() -> None:
    blob = ap.serialize_export(_exported())
    header = serialized._HEADER
    magic, _, crc, length = header.unpack_from(blob)
    other_version = header.pack(magic, serialized.FORMAT_VERSION + 1, crc, length)
    bad = {
        "empty": b"", "header cut": blob[:10], "payload cut": blob[:-7],
        "padded": blob + b"\0", "garbage": b"not an export at all" * 8,
        "bare JAX bytes cut": bytes(_exported().serialize())[:200],
        "other version": other_version + blob[header.size:],
    }
    rng = random.Random(0)
    for k in range(40):  # flipped bytes anywhere: header, payload, constants
        damaged = bytearray(blob)
        at = rng.randrange(len(damaged))
        damaged[at] ^= 1 + rng.randrange(255)
        bad[f"flip {k} at {at}"] = bytes(damaged)
    for what, data in bad.items():
        with pytest.raises(ExportError) as info:
            ap.deserialize_export(data)
        assert_clear(info.value, "deserialize_export")
        text = str(info.value)
        if what == "other version":
            assert "another format version" in text, text
        else:
            assert "corrupt" in text or "truncated" in text or "could not read" in text, text
    with pytest.raises(TypeError):
        ap.deserialize_export("a path, not bytes")  # type: ignore[arg-type]


def test_the_header_check_is_what_catches_silent_damage() -> None:
    """Without the checksum, many flipped payload bytes pass JAX's reader: the envelope's
    CRC is what catches them (so the check above is not vacuous)."""
    blob = ap.serialize_export(_exported())
    size = serialized._HEADER.size
    passed_jax = 0
    rng = random.Random(1)
    for _ in range(60):
        damaged = bytearray(blob)
        damaged[size + rng.randrange(len(blob) - size)] ^= 0x01
        try:
            serialized._read_payload(bytes(damaged[size:]), "payload")
            passed_jax += 1
        except ExportError:
            pass
    assert passed_jax > 0
    assert struct.calcsize("<16sHIQ") == size
