"""More elementwise math: hyperbolic and inverse trigonometric functions, atan2, cbrt, rsqrt,
erfc.

Each lowers to the StableHLO/CHLO op `jax.lax` lowers to and has lax's JVP, written with
primitives (so both JAX's AD and adplugin's graph derivation run it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._primitive import Primitive
from adplugin.primitives._rules import bind, full_like
from adplugin.primitives.elementwise import _binary, _unary

hlo, chlo = jx.hlo, jx.chlo


def _one_minus_square(x: Any) -> Any:
    return bind("sub", full_like(x, 1), bind("square", x))


rsqrt_p: Primitive = _unary(  # rsqrt' = -0.5 rsqrt(x) / x
    "rsqrt", hlo.rsqrt, (lambda g, out, x: bind("mul", g, bind(
        "mul", full_like(x, -0.5), bind("div", out, x))),), kinds="f")
cbrt_p = _unary(  # cbrt' = 1 / (3 cbrt(x)^2)
    "cbrt", hlo.cbrt, (lambda g, out, x: bind("mul", g, bind(
        "mul", full_like(x, 1 / 3), bind("integer_pow", out, y=-2))),), kinds="f")
sinh_p: Primitive = _unary("sinh", lambda x: chlo.sinh(x),
                           (lambda g, out, x: bind("mul", g, bind("cosh", x)),), kinds="f")
cosh_p: Primitive = _unary("cosh", lambda x: chlo.cosh(x),
                           (lambda g, out, x: bind("mul", g, bind("sinh", x)),), kinds="f")
asin_p = _unary(  # asin' = 1 / sqrt(1 - x^2)
    "asin", lambda x: chlo.asin(x), (lambda g, out, x: bind(
        "mul", g, rsqrt_p.bind(_one_minus_square(x))),), kinds="f")
acos_p = _unary(  # acos' = -1 / sqrt(1 - x^2)
    "acos", lambda x: chlo.acos(x), (lambda g, out, x: bind(
        "mul", g, bind("neg", rsqrt_p.bind(_one_minus_square(x)))),), kinds="f")
atan_p = _unary(  # atan' = 1 / (1 + x^2)
    "atan", lambda x: chlo.atan(x), (lambda g, out, x: bind(
        "div", g, bind("add", full_like(x, 1), bind("square", x))),), kinds="f")
asinh_p = _unary(  # asinh' = 1 / sqrt(x^2 + 1)
    "asinh", lambda x: chlo.asinh(x), (lambda g, out, x: bind(
        "mul", g, rsqrt_p.bind(bind("add", bind("square", x), full_like(x, 1)))),), kinds="f")
acosh_p = _unary(  # acosh' = 1 / sqrt(x^2 - 1)
    "acosh", lambda x: chlo.acosh(x), (lambda g, out, x: bind(
        "mul", g, rsqrt_p.bind(bind("sub", bind("square", x), full_like(x, 1)))),), kinds="f")
atanh_p = _unary(  # atanh' = 1 / ((1 + x)(1 - x))
    "atanh", lambda x: chlo.atanh(x), (lambda g, out, x: bind(
        "mul", bind("div", full_like(x, 1), bind("add", full_like(x, 1), x)),
        bind("div", g, bind("sub", full_like(x, 1), x))),), kinds="f")


# atan2(x, y) = the angle of (y, x); d/dx = y / (x^2 + y^2), d/dy = -x / (x^2 + y^2)
def _norm2(x: Any, y: Any) -> Any:
    return bind("add", bind("square", x), bind("square", y))


atan2_p = _binary(
    "atan2", hlo.atan2,
    (lambda g, out, x, y: bind("mul", g, bind("div", y, _norm2(x, y))),
     lambda g, out, x, y: bind("mul", g, bind("div", bind("neg", x), _norm2(x, y)))),
    kinds="f")


# erfc = 1 - erf, accurate where erf is near 1; erfc' = -2/sqrt(pi) exp(-x^2)
erfc_p = _unary("erfc", lambda x: chlo.erfc(x), (lambda g, out, x: bind(
    "mul", full_like(x, -2 / np.sqrt(np.pi)), bind("mul", g, bind(
        "exp", bind("neg", bind("square", x))))),), kinds="f")
