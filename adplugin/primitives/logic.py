"""Comparisons, `select` (ap.where) and `is_finite`: boolean results, piecewise-constant ops."""

from __future__ import annotations

from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import shape_error, type_error
from adplugin._primitive import (
    ZERO_DERIVATIVE,
    Linear,
    Primitive,
    ShapeDtype,
    check_same_shape_dtype,
    define_primitive,
)
from adplugin.primitives._rules import zeros_like
from adplugin.primitives._wrapping import (
    broadcast_shapes,
    broadcast_to_shape,
    convert,
    dtype_of,
    op,
    promote,
)

hlo = jx.hlo


def _compare_type(dtype: np.dtype) -> str:
    return {"f": "FLOAT", "i": "SIGNED", "u": "UNSIGNED", "b": "UNSIGNED"}[jx.kind_of(dtype)]


def _comparison(name: str, direction: str, total_order: bool = False) -> Primitive:
    def abstract_eval(x: Any, y: Any) -> ShapeDtype:
        check_same_shape_dtype(name, (x, y))
        return ShapeDtype(x.shape, np.dtype(bool))

    def lowering(ctx: Any, x: Any, y: Any) -> Any:
        kind = _compare_type(np.dtype(ctx.avals_in[0].dtype))
        if total_order and kind == "FLOAT":  # -NaN < -inf < ... < -0 < 0 < ... < inf < NaN
            kind = "TOTALORDER"
        return hlo.compare(x, y, hlo.ComparisonDirectionAttr.get(direction),
                           compare_type=hlo.ComparisonTypeAttr.get(kind))

    return define_primitive(name, abstract_eval=abstract_eval, lowering=lowering,
                            jvp=ZERO_DERIVATIVE, elementwise=True)


eq_p = _comparison("eq", "EQ")
ne_p = _comparison("ne", "NE")
lt_p = _comparison("lt", "LT")
le_p = _comparison("le", "LE")
gt_p = _comparison("gt", "GT")
ge_p = _comparison("ge", "GE")
# total-order comparisons of floats (lax.lt_to, lax.le_to: sorting and searching)
lt_to_p = _comparison("lt_to", "LT", total_order=True)
le_to_p = _comparison("le_to", "LE", total_order=True)


def _is_finite_eval(x: Any) -> ShapeDtype:
    if jx.kind_of(x.dtype) != "f":
        raise type_error("is_finite", "unsupported dtype", np.dtype(x.dtype).name,
                         "a floating-point operand", "integers are always finite")
    return ShapeDtype(x.shape, np.dtype(bool))


is_finite_p = define_primitive("is_finite", abstract_eval=_is_finite_eval,
                               lowering=lambda ctx, x: hlo.is_finite(x),
                               jvp=ZERO_DERIVATIVE, elementwise=True)


# --- select(pred, on_true, on_false) -------------------------------------------------------------

def _select_eval(pred: Any, on_true: Any, on_false: Any) -> ShapeDtype:
    if np.dtype(pred.dtype) != np.dtype(bool) or pred.shape != on_true.shape:
        raise type_error("select", "the predicate must be boolean and shaped like the branches",
                         f"pred {np.dtype(pred.dtype).name}{list(pred.shape)}",
                         f"bool{list(on_true.shape)}", "use the ap.where wrapper")
    check_same_shape_dtype("select", (on_true, on_false))
    return ShapeDtype(on_true.shape, on_true.dtype, on_true.weak_type and on_false.weak_type)


def _select_transpose(ct: Any, pred: Any, on_true: Any, on_false: Any) -> list[Any]:
    if isinstance(pred, Linear):
        raise TypeError("ap.where: the predicate cannot be a linear input")
    zero = zeros_like(ct)
    return [None,
            select_p.bind(pred, ct, zero) if isinstance(on_true, Linear) else None,
            select_p.bind(pred, zero, ct) if isinstance(on_false, Linear) else None]


select_p: Primitive = define_primitive(
    "select", abstract_eval=_select_eval,
    lowering=lambda ctx, p, t, f: hlo.select(p, t, f),
    jvp=(None,
         lambda g, out, p, t, f: select_p.bind(p, g, zeros_like(g)),
         lambda g, out, p, t, f: select_p.bind(p, zeros_like(g), g)),
    transpose=_select_transpose, elementwise=True)


# ----------------------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------------------

def _comparison_wrapper(prim: Primitive, name: str, symbol: str) -> Any:
    def fn(x: Any, y: Any) -> Any:
        return prim.bind(*promote(name, x, y))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"x {symbol} y elementwise, a boolean array (derivative zero)."
    return op()(fn)


equal = _comparison_wrapper(eq_p, "equal", "==")
not_equal = _comparison_wrapper(ne_p, "not_equal", "!=")
less = _comparison_wrapper(lt_p, "less", "<")
less_equal = _comparison_wrapper(le_p, "less_equal", "<=")
greater = _comparison_wrapper(gt_p, "greater", ">")
greater_equal = _comparison_wrapper(ge_p, "greater_equal", ">=")


@op()
def isfinite(x: Any) -> Any:
    """True where x is neither infinite nor NaN."""
    (x,) = promote("isfinite", x)
    if jx.kind_of(dtype_of(x)) != "f":
        return broadcast_to_shape(np.asarray(True), tuple(np.shape(x)))
    return is_finite_p.bind(x)


@op()
def where(condition: Any, x: Any, y: Any) -> Any:
    """x where `condition` is true, else y; broadcasts all three (NumPy's `where`)."""
    if dtype_of(condition) != np.dtype(bool):
        condition = convert(condition, np.dtype(bool))
    x, y = promote("where", x, y)
    shape = broadcast_shapes("where", condition, x, y)
    cond, x, y = (broadcast_to_shape(v, shape) for v in (condition, x, y))
    if np.shape(cond) != shape:
        raise shape_error("where", "condition does not broadcast", np.shape(cond), shape,
                          "pass a condition that broadcasts against x and y")
    return select_p.bind(cond, x, y)
