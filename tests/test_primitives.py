"""One table of op specs drives `check_primitive` over every registered primitive."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

import adplugin as ap
from adplugin.testing import PrimitiveCheckError, check_primitive

rng = np.random.default_rng(0)


def normal(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return (np.abs(rng.standard_normal(shape)) + 0.5).astype(np.float32)


def distinct(*shape: int) -> np.ndarray:
    """Values with no ties (max/min and reductions are smooth there)."""
    return rng.permutation(np.arange(np.prod(shape), dtype=np.float32)).reshape(shape) / 7 - 1


class Spec(NamedTuple):
    args: tuple[Any, ...]
    params: dict[str, Any]
    hlo_op: str | None


def spec(*args: Any, hlo: str | None, **params: Any) -> Spec:
    return Spec(args, params, hlo)


X, Y = normal(8, 3), normal(8, 3)
SPECS: dict[str, Spec] = {
    "add": spec(X, Y, hlo="add"),
    "sub": spec(X, Y, hlo="subtract"),
    "mul": spec(X, Y, hlo="multiply"),
    "div": spec(X, positive(8, 3), hlo="divide"),
    "neg": spec(X, hlo="negate"),
    "exp": spec(X, hlo="exponential"),
    "log": spec(positive(8, 3), hlo="log"),
    "log1p": spec(positive(8, 3), hlo="log_plus_one"),
    "expm1": spec(X, hlo="exponential_minus_one"),
    "sin": spec(X, hlo="sine"),
    "cos": spec(X, hlo="cosine"),
    "tanh": spec(X, hlo="tanh"),
    "logistic": spec(X, hlo="logistic"),
    "sqrt": spec(positive(8, 3), hlo="sqrt"),
    "square": spec(X, hlo="multiply"),
    "abs": spec(positive(8, 3) * np.sign(X), hlo="abs"),
    "sign": spec(X, hlo="sign"),
    "max": spec(distinct(8, 3), distinct(8, 3) + 0.01, hlo="maximum"),
    "min": spec(distinct(8, 3), distinct(8, 3) + 0.01, hlo="minimum"),
    "pow": spec(positive(8, 3), normal(8, 3), hlo="power"),
    "integer_pow": spec(X, y=3, hlo="multiply"),
    "eq": spec(X, np.where(X > 0, X, Y), hlo="compare"),
    "ne": spec(X, np.where(X > 0, X, Y), hlo="compare"),
    "lt": spec(X, Y, hlo="compare"),
    "le": spec(X, Y, hlo="compare"),
    "gt": spec(X, Y, hlo="compare"),
    "ge": spec(X, Y, hlo="compare"),
    "is_finite": spec(np.where(X > 1, np.inf, X).astype(np.float32), hlo="is_finite"),
    "select": spec(X > 0, X, Y, hlo="select"),
    "convert_element_type": spec(X, new_dtype=np.dtype(np.float16), weak_type=False,
                                 hlo="convert"),
    "stop_gradient": spec(X, hlo=None),
    "broadcast_in_dim": spec(normal(8, 1), shape=(2, 8, 3), broadcast_dimensions=(1, 2),
                             hlo="broadcast_in_dim"),
    "reshape": spec(normal(8, 6), new_sizes=(8, 2, 3), hlo="reshape"),
    "transpose": spec(normal(8, 3, 2), permutation=(2, 0, 1), hlo="transpose"),
    "slice": spec(normal(8, 5), start_indices=(0, 1), limit_indices=(8, 4), hlo="slice"),
    "concatenate": spec(normal(8, 2), normal(8, 3), dimension=1, hlo="concatenate"),
    "reduce_sum": spec(normal(8, 3, 2), axes=(1,), hlo="reduce"),
    "reduce_max": spec(distinct(8, 3, 2), axes=(0, 2), hlo="reduce"),
    "dot_general": spec(normal(8, 3, 4), normal(8, 4, 2),
                        dimension_numbers=(((2,), (1,)), ((0,), (0,))), hlo="dot_general"),
    "take": spec(normal(8, 5), np.array([[0, 4], [2, 2]], np.int32), axis=1, hlo="gather"),
    "scatter_add": spec(normal(8, 2, 2), np.array([[0, 4], [2, 2]], np.int32), axis=1,
                        operand_shape=(8, 5), hlo="scatter"),
}
# extra cases of primitives whose behaviour depends on params or dtypes
EXTRA: list[tuple[str, Spec]] = [
    ("integer_pow", spec(positive(8, 3), y=-2, hlo="divide")),
    ("integer_pow", spec(X, y=0, hlo="broadcast_in_dim")),
    ("convert_element_type", spec(X, new_dtype=np.dtype(np.int32), weak_type=False,
                                  hlo="convert")),
    ("convert_element_type", spec(X, new_dtype=np.dtype(bool), weak_type=False,
                                  hlo="compare")),
    ("add", spec(np.arange(24, dtype=np.int32).reshape(8, 3), np.ones((8, 3), np.int32),
                 hlo="add")),
    ("max", spec(np.arange(24, dtype=np.int32).reshape(8, 3), np.full((8, 3), 5, np.int32),
                 hlo="maximum")),
    ("dot_general", spec(normal(8, 4), normal(4, 3), dimension_numbers=(((1,), (0,)), ((), ())),
                         hlo="dot_general")),
    ("reduce_sum", spec(np.arange(24, dtype=np.int32).reshape(8, 3), axes=(0, 1), hlo="reduce")),
]

BUILTIN = {name for name in ap.list_primitives() if "." not in name}  # user prims use a dot


def test_every_primitive_has_a_spec() -> None:
    missing = BUILTIN - set(SPECS)
    assert not missing, f"registered primitives without a spec: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_primitive_rules(name: str) -> None:
    s = SPECS[name]
    report = check_primitive(name, *s.args, hlo_op=s.hlo_op, **s.params)
    for rule in ("abstract_eval", "jit", "lowering", "vmap", "sharding"):
        assert rule in report.passed, (rule, report)
    assert "jvp" in report.passed or name in {"eq", "ne", "lt", "le", "gt", "ge", "is_finite"}


@pytest.mark.parametrize("name,case", EXTRA, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXTRA)])
def test_primitive_rules_more_cases(name: str, case: Spec) -> None:
    report = check_primitive(name, *case.args, hlo_op=case.hlo_op, **case.params)
    assert {"abstract_eval", "jit", "lowering", "vmap"} <= set(report.passed)


def test_linear_primitives_pass_the_transpose_check() -> None:
    linear = [n for n in sorted(SPECS) if ap.get_primitive(n).is_linear]
    assert {"add", "mul", "dot_general", "take", "scatter_add", "reduce_sum"} <= set(linear)
    for name in linear:
        s = SPECS[name]
        assert "transpose" in check_primitive(name, *s.args, **s.params).passed, name


def test_check_primitive_catches_a_wrong_jvp() -> None:
    wrong = ap.define_primitive(
        "test.wrong_sin", lowering=lambda ctx, x: ap.extend.hlo.sine(x),
        jvp=(lambda g, out, x: ap.multiply(g, ap.sin(x)),), elementwise=True)
    with pytest.raises(PrimitiveCheckError, match="jvp rule failed"):
        check_primitive(wrong, X)


def test_check_primitive_catches_a_wrong_transpose() -> None:
    wrong = ap.define_primitive(
        "test.wrong_double", lowering=lambda ctx, x: ap.extend.hlo.add(x, x),
        jvp=(lambda g, out, x: ap.add(g, g),), transpose=lambda ct, x: [ct],
        elementwise=True)
    with pytest.raises(PrimitiveCheckError, match="transpose rule failed"):
        check_primitive(wrong, X)


def test_check_primitive_catches_a_wrong_abstract_eval() -> None:
    wrong = ap.define_primitive(
        "test.wrong_shape", lowering=lambda ctx, x: ap.extend.hlo.negate(x),
        abstract_eval=lambda x: ap.ShapeDtype((x.shape[0] + 1, *x.shape[1:]), x.dtype),
        jvp=ap.ZERO_DERIVATIVE, batching=lambda args, dims: (args[0], dims[0]),
        sharding=lambda specs, x: specs[0])
    with pytest.raises(PrimitiveCheckError):
        check_primitive(wrong, X)
