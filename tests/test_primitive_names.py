"""adplugin's JAX primitives are namespaced ("ap.mul"), so jaxprs and JAX's tools tell them from
lax's; matmul honours precision like jnp.matmul; checkpoint policies save adplugin's dots."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import print_saved_residuals

import adplugin as ap
from adplugin._errors import OpTypeError

rng = np.random.default_rng(0)


def rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# --- names ------------------------------------------------------------------------------------

def _lax_primitive_names() -> set[str]:
    return {p.name for p in vars(lax).values() if isinstance(p, jax.extend.core.Primitive)}


def test_every_primitive_has_a_namespaced_jax_name_and_a_short_registry_name() -> None:
    lax_names = _lax_primitive_names()
    assert {"mul", "add", "dot_general"} <= lax_names  # the names adplugin used to reuse
    names = ap.list_primitives()
    assert {"mul", "add", "dot_general"} <= set(names)
    for name in names:
        prim = ap.get_primitive(name)
        assert prim.name == name and not name.startswith("ap.")
        assert prim.jax_name == prim.jax_primitive.name == f"ap.{name}"
        assert prim.jax_name not in lax_names
    assert len({ap.get_primitive(n).jax_name for n in names}) == len(names)


def test_a_jaxpr_tells_adplugin_ops_from_lax_ops() -> None:
    x, w = rand(3, 4), rand(4, 2)

    def ours(x: Any, w: Any) -> Any:
        return ap.sum(ap.multiply(ap.matmul(x, w), 2.0))

    def theirs(x: Any, w: Any) -> Any:
        return jnp.sum(jnp.multiply(jnp.matmul(x, w), 2.0))

    our_prims = [e.primitive.name for e in jax.make_jaxpr(ours)(x, w).jaxpr.eqns]
    lax_prims = [e.primitive.name for e in jax.make_jaxpr(theirs)(x, w).jaxpr.eqns]
    assert our_prims == ["ap.dot_general", "ap.broadcast_in_dim", "ap.mul", "ap.reduce_sum"]
    assert "dot_general" in lax_prims and "mul" in lax_prims
    assert not set(our_prims) & set(lax_prims)
    assert "ap.dot_general[" in str(jax.make_jaxpr(ours)(x, w))
    # graphs and errors keep the short names
    with ap.Graph() as g:
        p = ap.placeholder((3, 4))
        ours(p, w)
    assert [n.op_name for n in g.nodes if n.kind == "op"][0] == "dot_general"
    with pytest.raises(TypeError, match=r"ap\.add: the primitive takes operands of one shape"):
        ap.get_primitive("add").bind(x, x[:1])


def test_user_primitives_are_namespaced_too_and_names_are_checked() -> None:
    floor_p = ap.define_primitive("names_test.floor",
                                  lowering=lambda ctx, v: ap.extend.hlo.floor(v),
                                  jvp=ap.ZERO_DERIVATIVE, elementwise=True)
    v = np.array([1.5, -2.5], np.float32)
    assert "ap.names_test.floor" in str(jax.make_jaxpr(floor_p.bind)(v))
    assert ap.get_primitive("names_test.floor") is floor_p
    np.testing.assert_array_equal(floor_p.bind(v), np.floor(v))
    for bad in ("", " padded ", 3):
        with pytest.raises(TypeError, match=r"ap\.define_primitive: the name is not"):
            ap.define_primitive(bad, lowering=lambda ctx, a: a,  # type: ignore[arg-type]
                                jvp=ap.ZERO_DERIVATIVE, elementwise=True)


# --- matmul precision -------------------------------------------------------------------------

def _precisions(text: str) -> list[str]:
    """The precision config of each stablehlo.dot_general in a lowered module."""
    found = []
    for line in text.splitlines():
        if "stablehlo.dot_general" in line:
            m = re.search(r"precision = \[(\w+), (\w+)\]", line)
            found.append(f"{m.group(1)},{m.group(2)}" if m else "DEFAULT,DEFAULT")
    return found


@pytest.mark.parametrize("level", ["default", "high", "highest", "float32", "bfloat16"])
def test_default_matmul_precision_is_honoured_like_jnp(level: str) -> None:
    a, b, v = rand(4, 5), rand(5, 3), rand(5)

    def lowered(mm: Any) -> list[str]:
        def f(a: Any, b: Any, v: Any) -> Any:
            return mm(a, b), mm(a, v)

        return _precisions(jax.jit(f).lower(a, b, v).as_text())

    with jax.default_matmul_precision(level):
        ours, theirs = lowered(ap.matmul), lowered(jnp.matmul)
        ours_dot = lowered(ap.dot)
    assert ours == theirs == ours_dot and len(ours) == 2
    expected = {"default": "DEFAULT", "bfloat16": "DEFAULT", "high": "HIGH",
                "highest": "HIGHEST", "float32": "HIGHEST"}[level]
    assert ours == [f"{expected},{expected}"] * 2
    assert lowered(ap.matmul) == lowered(jnp.matmul) == ["DEFAULT,DEFAULT"] * 2  # outside


def test_explicit_precision_reaches_the_lowered_program_and_its_gradient() -> None:
    a, b = rand(4, 5), rand(5, 3)
    def lowered_grad(mm: Any, precision: Any) -> list[str]:
        def loss(a: Any, b: Any) -> Any:
            return jnp.sum(mm(a, b, precision=precision))

        return _precisions(jax.jit(jax.grad(loss, (0, 1))).lower(a, b).as_text())

    for precision in ["highest", lax.Precision.HIGH, ("high", "highest"),
                      [lax.Precision.HIGHEST, lax.Precision.DEFAULT]]:
        ours = lowered_grad(ap.matmul, precision)
        theirs = lowered_grad(jnp.matmul, tuple(precision) if isinstance(precision, list)
                              else precision)
        assert ours and all(p != "DEFAULT,DEFAULT" for p in ours), ours
        assert ours == theirs
        np.testing.assert_allclose(ap.matmul(a, b, precision=precision), a @ b, rtol=1e-5)
    with ap.Graph() as g:  # graphs keep the precision the op was called with
        pa = ap.placeholder((4, 5))
        out = ap.matmul(pa, b, precision="highest")
        (ga,) = ap.gradients(ap.sum(out), [pa])
    assert _precisions(g.lower([out, ga], {pa: a}).as_text()) == ["HIGHEST,HIGHEST"] * 2


def test_preferred_element_type_matches_jnp() -> None:
    a, b = rand(4, 5, dtype=np.float16), rand(5, 3, dtype=np.float16)
    ours = ap.matmul(a, b, preferred_element_type=np.float32)
    theirs = jnp.matmul(a, b, preferred_element_type=jnp.float32)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    assert ap.dot(a, b, preferred_element_type=np.float32).dtype == np.float32

    def loss(mm: Any) -> Any:
        return jax.grad(lambda a, b: jnp.sum(jnp.sin(mm(a, b, preferred_element_type=jnp.float32))),
                        (0, 1))(a, b)

    for g_ours, g_theirs in zip(loss(ap.matmul), loss(jnp.matmul), strict=True):
        assert g_ours.dtype == g_theirs.dtype == np.float16
        np.testing.assert_allclose(np.asarray(g_ours, np.float32),
                                   np.asarray(g_theirs, np.float32), rtol=2e-2, atol=2e-2)
    vmapped = jax.vmap(lambda a: ap.matmul(a, b, preferred_element_type=np.float32))(
        np.stack([a, a]))
    np.testing.assert_allclose(vmapped[1], theirs, rtol=1e-3)


@pytest.mark.parametrize("kwargs, problem", [
    ({"precision": "bogus"}, "not a matmul precision"),
    ({"precision": "F32_F32_F32"}, "a dot algorithm"),
    ({"preferred_element_type": np.int32}, "preferred_element_type does not fit"),
    ({"preferred_element_type": np.float16}, "preferred_element_type does not fit"),
    ({"preferred_element_type": "floaty"}, "preferred_element_type is not a dtype"),
])
def test_bad_precision_arguments_get_clear_errors(kwargs: dict[str, Any], problem: str) -> None:
    for mm in ("matmul", "dot"):
        with pytest.raises(OpTypeError, match=rf"ap\.{mm}: {problem}") as info:
            getattr(ap, mm)(rand(2, 3), rand(3, 2), **kwargs)
        assert "Fix:" in str(info.value)
    with jax.default_matmul_precision("F32_F32_F32"), pytest.raises(OpTypeError,
                                                                    match="jax.default_matmul"):
        ap.matmul(rand(2, 3), rand(3, 2))


# --- checkpoint policies ----------------------------------------------------------------------

def _saved(fn: Any, policy: Any, *args: Any, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What jax.checkpoint(fn, policy) saves for the backward pass: one 'shape kind' entry per
    residual, kind 'arg' or the primitive's name without adplugin's namespace."""
    capsys.readouterr()
    print_saved_residuals(jax.checkpoint(fn, policy=policy), *args)
    entries = []
    for line in capsys.readouterr().out.splitlines():
        shape = line.split()[0]
        if "from the argument" in line:
            entries.append(f"{shape} arg")
        else:
            m = re.search(r"output of (\S+)", line)
            entries.append(f"{shape} {m.group(1).removeprefix('ap.') if m else line}")
    return sorted(entries)


def _mlp(mm: Any, act: Any, total: Any) -> Any:
    def f(w1: Any, w2: Any, x: Any) -> Any:
        return total(act(mm(act(mm(x, w1)), w2)))

    return f


POLICIES = ["dots_saveable", "checkpoint_dots", "dots_with_no_batch_dims_saveable",
            "checkpoint_dots_with_no_batch_dims", "nothing_saveable", "everything_saveable"]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("policy", POLICIES)
def test_ap_checkpoint_policies_save_adplugin_dots_as_jax_saves_its_own(
        policy: str, batched: bool, capsys: pytest.CaptureFixture[str]) -> None:
    lead = (2,) if batched else ()  # batched: a batch dim in the products
    w1, w2, x = rand(*lead, 4, 5), rand(*lead, 5, 3), rand(*lead, 6, 4)
    ours = _saved(_mlp(ap.matmul, ap.sin, ap.sum), getattr(ap.checkpoint_policies, policy),
                  w1, w2, x, capsys=capsys)
    theirs = _saved(_mlp(jnp.matmul, jnp.sin, jnp.sum),
                    getattr(jax.checkpoint_policies, policy), w1, w2, x, capsys=capsys)
    assert ours == theirs
    if policy.startswith(("dots", "checkpoint_dots")):
        saves_dots = not (batched and "no_batch" in policy)
        assert any("dot_general" in e for e in ours) == saves_dots, ours
    # and the gradient is jax.grad's
    g_ours = jax.grad(jax.checkpoint(_mlp(ap.matmul, ap.sin, ap.sum),
                                     policy=getattr(ap.checkpoint_policies, policy)))(w1, w2, x)
    g_ref = jax.grad(_mlp(jnp.matmul, jnp.sin, jnp.sum))(w1, w2, x)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-5)


def test_jax_own_dot_policies_do_not_see_adplugin_dots(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Why ap.checkpoint_policies exists: JAX compares the primitive with lax.dot_general_p."""
    w1, w2, x = rand(4, 5), rand(5, 3), rand(6, 4)
    ours = _mlp(ap.matmul, ap.sin, ap.sum)
    with_jax = _saved(ours, jax.checkpoint_policies.dots_saveable, w1, w2, x, capsys=capsys)
    with_ap = _saved(ours, ap.checkpoint_policies.dots_saveable, w1, w2, x, capsys=capsys)
    assert not any("dot_general" in e for e in with_jax)
    assert sum("dot_general" in e for e in with_ap) == 2


def test_policies_are_asked_about_adplugin_dots_as_about_lax_dots() -> None:
    dn_plain = (((1,), (0,)), ((), ()))
    dn_batch = (((2,), (1,)), ((0,), (0,)))
    ours = ap.get_primitive("dot_general").jax_primitive
    src, dst = "device", "pinned_host"
    pairs = [(ap.checkpoint_policies.offload_dot_with_no_batch_dims(src, dst),
              jax.checkpoint_policies.offload_dot_with_no_batch_dims(src, dst)),
             (ap.checkpoint_policies.dots_with_no_batch_dims_saveable,
              jax.checkpoint_policies.dots_with_no_batch_dims_saveable)]
    for adapted, original in pairs:
        for dn in (dn_plain, dn_batch):
            assert adapted(ours, dimension_numbers=dn) == original(lax.dot_general_p,
                                                                   dimension_numbers=dn)
        mul = ap.get_primitive("mul").jax_primitive  # other primitives pass through unchanged
        assert adapted(mul) == original(mul)
    custom = ap.checkpoint_policies.recognizing_adplugin_dots(
        lambda prim, *_, **__: prim is lax.dot_general_p)
    assert custom(ours, dimension_numbers=dn_plain) and not custom(
        ap.get_primitive("add").jax_primitive)
