"""Bad input gets a clear error naming the op, what was given, what was expected and the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin._errors import AdpluginError

x23 = np.ones((2, 3), np.float32)
x4 = np.ones(4, np.float32)

BAD_CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("shape mismatch", lambda: ap.add(x23, x4), r"ap\.add: operand shapes do not broadcast"),
    ("shape mismatch in matmul", lambda: ap.matmul(x23, x4), r"ap\.(matmul|dot_general)"),
    ("bad reshape", lambda: ap.reshape(x23, (4, 2)), r"ap\.reshape"),
    ("bad axis", lambda: ap.sum(x23, axis=2), r"ap\.sum: axis out of range"),
    ("repeated axis", lambda: ap.sum(x23, axis=(0, -2)), r"ap\.sum: axis out of range or repeated"),
    ("bad transpose axes", lambda: ap.transpose(x23, (0, 0)), r"ap\.transpose"),
    ("squeeze a non-1 axis", lambda: ap.squeeze(x23, 0), r"ap\.squeeze: axis is not of size 1"),
    ("float indices", lambda: ap.take(x4, np.array([0.5])), r"ap\.take"),
    ("string operand", lambda: ap.sin("x"), r"ap\.sin: operand is not an array"),
    ("None operand", lambda: ap.multiply(x4, None), r"ap\.multiply: operand is not an array"),
    ("bad dtype", lambda: ap.astype(x4, "complex64"), r"ap\.astype: unsupported target dtype"),
    ("not a dtype", lambda: ap.astype(x4, "floaty"), r"ap\.astype: not a dtype"),
    ("concatenate ranks", lambda: ap.concatenate([x23, x4]), r"ap\.concatenate"),
    ("broadcast_to", lambda: ap.broadcast_to(x23, (3, 3)), r"ap\.broadcast_to"),
    ("primitive fed unequal shapes", lambda: ap.get_primitive("add").bind(x23, x23[:1]),
     r"ap\.add: the primitive takes operands of one shape and dtype"),
    ("primitive fed ints", lambda: ap.get_primitive("sin").bind(np.ones(3, np.int32)),
     r"ap\.sin: unsupported dtype"),
    ("complex operand", lambda: ap.add(x4, 1j), r"ap\.add: complex operands are not supported"),
    ("bad matmul precision", lambda: ap.matmul(x23, x23.T, precision="bogus"),
     r"ap\.matmul: not a matmul precision"),
    ("narrower preferred type", lambda: ap.dot(x23, x23.T, preferred_element_type="float16"),
     r"ap\.dot: preferred_element_type does not fit"),
    ("primitive name", lambda: ap.define_primitive("", lowering=lambda c, a: a,
                                                   jvp=ap.ZERO_DERIVATIVE, elementwise=True),
     r"ap\.define_primitive: the name is not a non-empty string"),
    ("truncating assignment", lambda: ap.Variable(np.int32(1)).assign(0.5),
     r"ap\.Variable\(Variable\d+\)\.assign: a float value would be truncated"),
]


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gets_a_clear_error(case: tuple[str, Callable[[], Any], str]) -> None:
    _, call, pattern = case
    with pytest.raises((AdpluginError, TypeError, ValueError), match=pattern) as info:
        call()
    text = str(info.value)
    assert "Given:" in text and "Expected:" in text and "Fix:" in text, text


def test_errors_are_also_raised_under_jit_and_vmap() -> None:
    with pytest.raises(ValueError, match="operand shapes do not broadcast"):
        jax.jit(lambda a, b: ap.add(a, b))(x23, x4)
    with pytest.raises(ValueError, match="operand shapes do not broadcast"):
        jax.vmap(lambda a: ap.add(a, x4))(x23)


def test_differentiating_with_respect_to_an_integer_is_refused() -> None:
    with pytest.raises(TypeError, match="int32"):
        jax.grad(lambda v: ap.sum(ap.sin(v)))(np.arange(3, dtype=np.int32))


def test_not_differentiable_marker_gives_a_clear_error() -> None:
    floor_p = ap.define_primitive(
        "test.floor_no_derivative", lowering=lambda ctx, v: ap.extend.hlo.floor(v),
        jvp=ap.NOT_DIFFERENTIABLE, elementwise=True)
    v = np.array([1.5, 2.5], np.float32)
    np.testing.assert_array_equal(floor_p.bind(v), jnp.floor(v))
    with pytest.raises(TypeError, match=r"ap\.test\.floor_no_derivative: the op is not "
                                        r"differentiable.*Fix: wrap its inputs in ap\.stop"):
        jax.grad(lambda u: jnp.sum(floor_p.bind(u)))(v)


def test_redefining_a_primitive_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        ap.define_primitive("add", lowering=lambda ctx, a, b: a, jvp=ap.ZERO_DERIVATIVE,
                            elementwise=True)
