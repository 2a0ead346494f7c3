"""One table of op specs drives `check_primitive` over every registered primitive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adplugin as ap
from adplugin.testing import check_primitive

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
    reference: Callable[..., Any]  # called as the primitive is: reference(*args, **params)


def spec(*args: Any, hlo: str | None, reference: Callable[..., Any], **params: Any) -> Spec:
    return Spec(args, params, hlo, reference)


def ints(*shape: int, high: int = 50) -> np.ndarray:
    return rng.integers(-high, high, shape).astype(np.int32)


def _convert(x: Any, new_dtype: Any, weak_type: bool) -> Any:
    return lax.convert_element_type(x, new_dtype)


def _scatter_add(u: Any, i: Any, axis: int, operand_shape: tuple[int, ...]) -> Any:
    # zeros with u's slices added at the (clamped) indices along `axis`
    where = (slice(None),) * axis + (i,)
    return jnp.zeros(operand_shape, u.dtype).at[where].add(u, mode="clip")


def _identity(x: Any, sharding: Any) -> Any:
    return x


X, Y = normal(8, 3), normal(8, 3)
SPECS: dict[str, Spec] = {
    "add": spec(X, Y, hlo="add", reference=jnp.add),
    "sub": spec(X, Y, hlo="subtract", reference=jnp.subtract),
    "mul": spec(X, Y, hlo="multiply", reference=jnp.multiply),
    "div": spec(X, positive(8, 3), hlo="divide", reference=jnp.divide),
    "neg": spec(X, hlo="negate", reference=jnp.negative),
    "exp": spec(X, hlo="exponential", reference=jnp.exp),
    "log": spec(positive(8, 3), hlo="log", reference=jnp.log),
    "log1p": spec(positive(8, 3), hlo="log_plus_one", reference=jnp.log1p),
    "expm1": spec(X, hlo="exponential_minus_one", reference=jnp.expm1),
    "sin": spec(X, hlo="sine", reference=jnp.sin),
    "cos": spec(X, hlo="cosine", reference=jnp.cos),
    "tanh": spec(X, hlo="tanh", reference=jnp.tanh),
    "logistic": spec(X, hlo="logistic", reference=jax.nn.sigmoid),
    "sqrt": spec(positive(8, 3), hlo="sqrt", reference=jnp.sqrt),
    "square": spec(X, hlo="multiply", reference=jnp.square),
    "abs": spec(positive(8, 3) * np.sign(X), hlo="abs", reference=jnp.abs),
    "sign": spec(X, hlo="sign", reference=jnp.sign),
    "max": spec(distinct(8, 3), distinct(8, 3) + 0.01, hlo="maximum", reference=jnp.maximum),
    "min": spec(distinct(8, 3), distinct(8, 3) + 0.01, hlo="minimum", reference=jnp.minimum),
    "pow": spec(positive(8, 3), normal(8, 3), hlo="power", reference=jnp.power),
    "integer_pow": spec(X, y=3, hlo="multiply", reference=lax.integer_pow),
    "eq": spec(X, np.where(X > 0, X, Y), hlo="compare", reference=jnp.equal),
    "ne": spec(X, np.where(X > 0, X, Y), hlo="compare", reference=jnp.not_equal),
    "lt": spec(X, Y, hlo="compare", reference=jnp.less),
    "le": spec(X, Y, hlo="compare", reference=jnp.less_equal),
    "gt": spec(X, Y, hlo="compare", reference=jnp.greater),
    "ge": spec(X, Y, hlo="compare", reference=jnp.greater_equal),
    "is_finite": spec(np.where(X > 1, np.inf, X).astype(np.float32), hlo="is_finite",
                      reference=jnp.isfinite),
    "select": spec(X > 0, X, Y, hlo="select", reference=lax.select),
    "convert_element_type": spec(X, new_dtype=np.dtype(np.float16), weak_type=False,
                                 hlo="convert", reference=_convert),
    "stop_gradient": spec(X, hlo=None, reference=lax.stop_gradient),
    "shard": spec(X, sharding=NamedSharding(jax.make_mesh((8,), ("x",)), P("x", None)),
                  hlo=None, reference=_identity),
    "broadcast_in_dim": spec(normal(8, 1), shape=(2, 8, 3), broadcast_dimensions=(1, 2),
                             hlo="broadcast_in_dim", reference=lax.broadcast_in_dim),
    "reshape": spec(normal(8, 6), new_sizes=(8, 2, 3), hlo="reshape", reference=lax.reshape),
    "transpose": spec(normal(8, 3, 2), permutation=(2, 0, 1), hlo="transpose",
                      reference=lax.transpose),
    "slice": spec(normal(8, 5), start_indices=(0, 1), limit_indices=(8, 4), hlo="slice",
                  reference=lax.slice),
    "concatenate": spec(normal(8, 2), normal(8, 3), dimension=1, hlo="concatenate",
                        reference=lambda *xs, dimension: lax.concatenate(xs, dimension)),
    "reduce_sum": spec(normal(8, 3, 2), axes=(1,), hlo="reduce",
                       reference=lambda x, axes: jnp.sum(x, axis=axes)),
    "reduce_max": spec(distinct(8, 3, 2), axes=(0, 2), hlo="reduce",
                       reference=lambda x, axes: jnp.max(x, axis=axes)),
    "dot_general": spec(normal(8, 3, 4), normal(8, 4, 2),
                        dimension_numbers=(((2,), (1,)), ((0,), (0,))), hlo="dot_general",
                        reference=lax.dot_general),
    "take": spec(normal(8, 5), np.array([[0, 4], [2, 2]], np.int32), axis=1, hlo="gather",
                 reference=lambda x, i, axis: jnp.take(x, i, axis=axis, mode="clip")),
    "scatter_add": spec(normal(8, 2, 2), np.array([[0, 4], [2, 2]], np.int32), axis=1,
                        operand_shape=(8, 5), hlo="scatter", reference=_scatter_add),
    # --- tan, erf, rounding, rem, clamp, reduce_min/prod, argmax/argmin, sort, cumulative ops
    # (operands derived from X and Y: no draws from rng, so later tables keep their data)
    "tan": spec(X * 0.4, hlo="tan", reference=jnp.tan),
    "erf": spec(X, hlo=None, reference=lax.erf),  # lowers to chlo.erf
    "floor": spec(X * 3, hlo="floor", reference=jnp.floor),
    "ceil": spec(X * 3, hlo="ceil", reference=jnp.ceil),
    "round": spec(X * 3, rounding_method=1, hlo="round_nearest_even",
                  reference=lambda x, rounding_method: lax.round(x, rounding_method)),
    "rem": spec(X * 3, np.abs(Y) + 0.5, hlo="remainder", reference=lax.rem),
    "clamp": spec(X - 1, Y, X + 1, hlo="clamp", reference=lax.clamp),
    "reduce_min": spec(X, axes=(1,), hlo="reduce",
                       reference=lambda x, axes: jnp.min(x, axis=axes)),
    "reduce_prod": spec(X, axes=(1,), hlo="reduce",
                        reference=lambda x, axes: jnp.prod(x, axis=axes)),
    "argmax": spec(X, axes=(1,), index_dtype=np.dtype(np.int32), hlo="reduce",
                   reference=lambda x, axes, index_dtype: lax.argmax(x, axes[0], index_dtype)),
    "argmin": spec(X, axes=(1,), index_dtype=np.dtype(np.int32), hlo="reduce",
                   reference=lambda x, axes, index_dtype: lax.argmin(x, axes[0], index_dtype)),
    "sort": spec(X, dimension=1, is_stable=True, hlo="sort",
                 reference=lambda x, dimension, is_stable: lax.sort(x, dimension=dimension,
                                                                    is_stable=is_stable)),
    "argsort": spec(X, dimension=1, is_stable=True, index_dtype=np.dtype(np.int32), hlo="sort",
                    reference=lambda x, dimension, is_stable, index_dtype: jnp.argsort(
                        x, axis=dimension, stable=is_stable).astype(index_dtype)),
    "cumsum": spec(X, axis=1, reverse=True, hlo="reduce_window", reference=lax.cumsum),
    "cumprod": spec(X, axis=1, reverse=False, hlo="reduce_window", reference=lax.cumprod),
    "cummax": spec(X, axis=1, reverse=False, hlo="reduce_window", reference=lax.cummax),
    "cummin": spec(X, axis=1, reverse=True, hlo="reduce_window", reference=lax.cummin),
    "cumlogsumexp": spec(X, axis=1, reverse=False, hlo="reduce_window",
                         reference=lax.cumlogsumexp),
    "rsqrt": spec(np.abs(X) + 0.5, hlo="rsqrt", reference=lax.rsqrt),
    "cbrt": spec(np.abs(X) + 0.5, hlo="cbrt", reference=lax.cbrt),
    "sinh": spec(X, hlo=None, reference=jnp.sinh),  # CHLO ops: chlo.sinh and so on
    "cosh": spec(X, hlo=None, reference=jnp.cosh),
    "asin": spec(np.tanh(X) * 0.9, hlo=None, reference=jnp.arcsin),
    "acos": spec(np.tanh(X) * 0.9, hlo=None, reference=jnp.arccos),
    "atan": spec(X, hlo=None, reference=jnp.arctan),
    "asinh": spec(X, hlo=None, reference=jnp.arcsinh),
    "acosh": spec(np.abs(X) + 1.2, hlo=None, reference=jnp.arccosh),
    "atanh": spec(np.tanh(X) * 0.9, hlo=None, reference=jnp.arctanh),
    "atan2": spec(X, np.abs(Y) + 0.5, hlo="atan2", reference=jnp.arctan2),
    "erfc": spec(X, hlo=None, reference=lax.erfc),
    "lt_to": spec(np.where(X > 0, -0.0, X).astype(np.float32), np.where(X > 0, 0.0, Y).astype(
        np.float32), hlo="compare", reference=lambda x, y: lax.lt_to_p.bind(x, y)),
    "le_to": spec(np.where(X > 0, 0.0, X).astype(np.float32), np.where(X > 0, -0.0, Y).astype(
        np.float32), hlo="compare", reference=lambda x, y: lax.le_to_p.bind(x, y)),
}
# extra cases of primitives whose behaviour depends on params or dtypes
EXTRA: list[tuple[str, Spec]] = [
    ("integer_pow", spec(positive(8, 3), y=-2, hlo="divide", reference=lax.integer_pow)),
    ("integer_pow", spec(X, y=0, hlo="broadcast_in_dim", reference=lax.integer_pow)),
    ("convert_element_type", spec(X, new_dtype=np.dtype(np.int32), weak_type=False,
                                  hlo="convert", reference=_convert)),
    ("convert_element_type", spec(X, new_dtype=np.dtype(bool), weak_type=False,
                                  hlo="compare", reference=_convert)),
    ("add", spec(ints(8, 3), ints(8, 3), hlo="add", reference=jnp.add)),
    ("max", spec(ints(8, 3), ints(8, 3), hlo="maximum", reference=jnp.maximum)),
    ("dot_general", spec(normal(8, 4), normal(4, 3), dimension_numbers=(((1,), (0,)), ((), ())),
                         hlo="dot_general", reference=lax.dot_general)),
    ("reduce_sum", spec(ints(8, 3), axes=(0, 1), hlo="reduce",
                        reference=lambda x, axes: jnp.sum(x, axis=axes))),
    ("take", spec(normal(8, 5, 2), np.array([3, 0, 4], np.int32), axis=1, hlo="gather",
                  reference=lambda x, i, axis: jnp.take(x, i, axis=axis, mode="clip"))),
]

BUILTIN = {name for name in ap.list_primitives() if "." not in name}  # user prims use a dot


def test_every_primitive_has_a_spec() -> None:
    missing = BUILTIN - set(SPECS)
    assert not missing, f"registered primitives without a spec: {sorted(missing)}"


def test_every_spec_has_a_reference() -> None:
    cases = [*SPECS.items(), *EXTRA]
    missing = sorted({name for name, s in cases if not callable(s.reference)})
    assert not missing, f"specs without a jax.numpy/jax.lax reference: {missing}"


COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge", "is_finite"}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_primitive_rules(name: str) -> None:
    s = SPECS[name]
    report = check_primitive(name, *s.args, hlo_op=s.hlo_op, reference=s.reference, **s.params)
    for check in ("abstract_eval", "lowering", "impl", "jit", "reference", "batching",
                  "sharding"):
        assert check in report.passed, (check, report)
    assert "jvp" in report.passed or name in COMPARISONS, report
    if ap.get_primitive(name).is_linear:
        assert "transpose" in report.passed, report
    assert not report.notes, report  # every operand varies across the batch


@pytest.mark.parametrize("name,case", EXTRA, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXTRA)])
def test_primitive_rules_more_cases(name: str, case: Spec) -> None:
    report = check_primitive(name, *case.args, hlo_op=case.hlo_op, reference=case.reference,
                             **case.params)
    assert {"abstract_eval", "lowering", "impl", "jit", "reference", "batching"} <= set(
        report.passed), report
    assert not report.notes, report


def test_the_linear_primitives() -> None:
    linear = {n for n in SPECS if ap.get_primitive(n).is_linear}
    assert {"add", "mul", "dot_general", "take", "scatter_add", "reduce_sum"} <= linear
