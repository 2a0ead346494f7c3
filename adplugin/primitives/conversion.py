"""Dtype conversion (`astype`) and `stop_gradient`."""

from __future__ import annotations

from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import type_error
from adplugin._primitive import ZERO_DERIVATIVE, ShapeDtype, define_primitive
from adplugin.primitives._wrapping import check_array_like, dtype_of, op

hlo = jx.hlo

_SUPPORTED_KINDS = "biuf"


def _check_dtype(name: str, dtype: np.dtype) -> None:
    if jx.kind_of(dtype) not in _SUPPORTED_KINDS:
        raise type_error(name, "unsupported target dtype", dtype.name,
                         "a boolean, integer or floating-point dtype",
                         "pick one of bool, int8..int64, uint8..uint64, float16..float64")


# --- convert_element_type ------------------------------------------------------------------------

def _convert_eval(x: Any, *, new_dtype: np.dtype, weak_type: bool) -> ShapeDtype:
    _check_dtype("astype", np.dtype(new_dtype))
    return ShapeDtype(x.shape, np.dtype(new_dtype), weak_type)


def _convert_lower(ctx: Any, x: Any, *, new_dtype: np.dtype, weak_type: bool) -> Any:
    src = np.dtype(ctx.avals_in[0].dtype)
    if src == np.dtype(new_dtype):
        return x
    if np.dtype(new_dtype) == np.dtype(bool) and jx.kind_of(src) == "f":
        # any-to-bool is "x != 0" (NaN is true), spelled out as jax does
        zero = ctx.full(0, ctx.avals_in[0])
        return hlo.compare(x, zero, hlo.ComparisonDirectionAttr.get("NE"),
                           compare_type=hlo.ComparisonTypeAttr.get("FLOAT"))
    return hlo.convert(ctx.out_type(), x)


def _convert_jvp(g: Any, out: Any, x: Any, *, new_dtype: np.dtype, weak_type: bool) -> Any:
    # float -> float is linear; anything through an integer or boolean has zero derivative
    if jx.kind_of(new_dtype) != "f" or jx.kind_of(dtype_of(x)) != "f":
        return None
    return convert_p.bind(g, new_dtype=np.dtype(new_dtype), weak_type=weak_type)


def _convert_transpose(ct: Any, x: Any, *, new_dtype: np.dtype, weak_type: bool) -> list[Any]:
    return [convert_p.bind(ct, new_dtype=x.dtype, weak_type=False)]


def _convert_batching(args: Any, dims: Any, **params: Any) -> tuple[Any, Any]:
    return convert_p.bind(args[0], **params), dims[0]


convert_p = define_primitive(
    "convert_element_type", abstract_eval=_convert_eval, lowering=_convert_lower,
    jvp=(_convert_jvp,), transpose=_convert_transpose, batching=_convert_batching,
    sharding=lambda specs, x, **params: specs[0])


# --- stop_gradient: identity forward, zero derivative ------------------------------------------

stop_gradient_p = define_primitive(
    "stop_gradient", lowering=lambda ctx, x: x, jvp=ZERO_DERIVATIVE, elementwise=True)


# ----------------------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------------------

def astype(x: Any, dtype: Any) -> Any:
    """`x` converted to `dtype` (float64 needs x64 enabled, as everywhere in JAX)."""
    check_array_like("astype", x)
    try:
        target = jx.canonical_dtype(np.dtype(dtype))
    except TypeError:
        raise type_error("astype", "not a dtype", repr(dtype), "a NumPy dtype or its name",
                         "pass e.g. jnp.float32 or 'int32'") from None
    _check_dtype("astype", target)
    return _astype(x, dtype=target)


@op(static_argnames=("dtype",))
def _astype(x: Any, *, dtype: np.dtype) -> Any:
    if not hasattr(x, "dtype"):
        return np.asarray(x, dtype)
    if dtype_of(x) == dtype and not getattr(x, "weak_type", False):
        return x
    return convert_p.bind(x, new_dtype=dtype, weak_type=False)


@op()
def stop_gradient(x: Any) -> Any:
    """`x` itself, seen as a constant by every derivative."""
    check_array_like("stop_gradient", x)
    if not hasattr(x, "dtype"):
        return x
    return stop_gradient_p.bind(x)
