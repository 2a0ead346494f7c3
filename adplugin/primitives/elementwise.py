"""Elementwise arithmetic and math: each primitive's lowering, JVP and transpose side by side.

Primitives take operands of equal shape and dtype; the NumPy-style wrappers at the bottom
broadcast and promote. Batching and sharding rules are derived (`elementwise=True`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import type_error
from adplugin._primitive import (
    NOT_LINEAR,
    ZERO_DERIVATIVE,
    Linear,
    Primitive,
    ShapeDtype,
    check_same_shape_dtype,
    define_primitive,
)
from adplugin.primitives._rules import bind, full_like, zeros_like
from adplugin.primitives._wrapping import convert, dtype_of, op, promote, promote_inexact

hlo = jx.hlo

_KIND_NAMES = {"f": "floating", "i": "signed integer", "u": "unsigned integer", "b": "boolean"}


def _typed_eval(name: str, kinds: str) -> Callable[..., ShapeDtype]:
    """Elementwise abstract eval restricted to dtype kinds (e.g. "f" for transcendental ops)."""

    def rule(*avals: Any, **params: Any) -> ShapeDtype:
        check_same_shape_dtype(name, avals)
        dtype = np.dtype(avals[0].dtype)
        if jx.kind_of(dtype) not in kinds:
            raise type_error(name, "unsupported dtype", dtype.name,
                             " or ".join(_KIND_NAMES[k] for k in kinds) + " operands",
                             f"convert with ap.astype, or call the ap.{name} wrapper")
        return ShapeDtype(avals[0].shape, dtype, all(a.weak_type for a in avals))

    return rule


def _unary(name: str, lower: Callable[[Any], Any], jvp: Any, kinds: str = "fiu",
           transpose: Any = NOT_LINEAR) -> Primitive:
    return define_primitive(
        name, abstract_eval=_typed_eval(name, kinds), lowering=lambda ctx, x: lower(x),
        jvp=jvp, transpose=transpose, elementwise=True)


def _binary(name: str, lower: Callable[[Any, Any], Any], jvp: Any, kinds: str = "fiu",
            transpose: Any = NOT_LINEAR) -> Primitive:
    return define_primitive(
        name, abstract_eval=_typed_eval(name, kinds), lowering=lambda ctx, x, y: lower(x, y),
        jvp=jvp, transpose=transpose, elementwise=True)


# --- linear arithmetic ------------------------------------------------------------------------

def _add_transpose(ct: Any, x: Any, y: Any) -> list[Any]:
    return [ct if isinstance(x, Linear) else None, ct if isinstance(y, Linear) else None]


add_p = _binary("add", hlo.add, (lambda g, out, x, y: g, lambda g, out, x, y: g),
                kinds="fiub", transpose=_add_transpose)


def _sub_transpose(ct: Any, x: Any, y: Any) -> list[Any]:
    return [ct if isinstance(x, Linear) else None,
            neg_p.bind(ct) if isinstance(y, Linear) else None]


sub_p = _binary("sub", hlo.subtract,
                (lambda g, out, x, y: g, lambda g, out, x, y: neg_p.bind(g)),
                transpose=_sub_transpose)

neg_p: Primitive = _unary("neg", hlo.negate, (lambda g, out, x: neg_p.bind(g),),
               transpose=lambda ct, x: [neg_p.bind(ct)])


def _mul_transpose(ct: Any, x: Any, y: Any) -> list[Any]:
    # bilinear: transpose with respect to whichever operand is the linear one
    if isinstance(x, Linear) and isinstance(y, Linear):
        raise TypeError("ap.multiply: both operands linear; a product is bilinear, not linear")
    if isinstance(x, Linear):
        return [mul_p.bind(ct, y), None]
    return [None, mul_p.bind(x, ct)]


mul_p: Primitive = _binary("mul", hlo.multiply,
                (lambda g, out, x, y: mul_p.bind(g, y), lambda g, out, x, y: mul_p.bind(x, g)),
                kinds="fiub", transpose=_mul_transpose)


def _div_transpose(ct: Any, x: Any, y: Any) -> list[Any]:
    if isinstance(y, Linear):
        raise TypeError("ap.divide is linear in its numerator only")
    return [div_p.bind(ct, y), None]


# d(x/y) = dx/y - dy * (x/y)/y
div_p: Primitive = _binary("div", hlo.divide,
                (lambda g, out, x, y: div_p.bind(g, y),
                 lambda g, out, x, y: div_p.bind(mul_p.bind(neg_p.bind(g), out), y)),
                transpose=_div_transpose)

# --- smooth math --------------------------------------------------------------------------------

exp_p = _unary("exp", hlo.exponential, (lambda g, out, x: mul_p.bind(g, out),), kinds="f")
log_p = _unary("log", hlo.log, (lambda g, out, x: div_p.bind(g, x),), kinds="f")
log1p_p = _unary("log1p", hlo.log_plus_one,
                 (lambda g, out, x: div_p.bind(g, add_p.bind(x, full_like(x, 1))),), kinds="f")
expm1_p = _unary("expm1", hlo.exponential_minus_one,
                 (lambda g, out, x: mul_p.bind(g, add_p.bind(out, full_like(out, 1))),),
                 kinds="f")
sin_p: Primitive = _unary("sin", hlo.sine, (lambda g, out, x: mul_p.bind(g, cos_p.bind(x)),),
                          kinds="f")
cos_p: Primitive = _unary("cos", hlo.cosine,
               (lambda g, out, x: neg_p.bind(mul_p.bind(g, sin_p.bind(x))),), kinds="f")
# tanh' = (1 + tanh)(1 - tanh)
tanh_p = _unary("tanh", hlo.tanh, (lambda g, out, x: mul_p.bind(
    add_p.bind(g, mul_p.bind(g, out)), sub_p.bind(full_like(out, 1), out)),), kinds="f")
# sigmoid' = sigmoid (1 - sigmoid)
logistic_p = _unary("logistic", hlo.logistic, (lambda g, out, x: mul_p.bind(
    g, mul_p.bind(out, sub_p.bind(full_like(out, 1), out))),), kinds="f")
# sqrt' = 0.5 / sqrt (infinite at 0, as in jax.grad)
sqrt_p = _unary("sqrt", hlo.sqrt,
                (lambda g, out, x: mul_p.bind(g, div_p.bind(full_like(out, 0.5), out)),),
                kinds="f")
square_p = _unary("square", lambda x: hlo.multiply(x, x),
                  (lambda g, out, x: mul_p.bind(g, mul_p.bind(full_like(x, 2), x)),),
                  kinds="fiub")


# abs' = 1 for x >= 0, -1 otherwise (jax.grad's convention at 0)
def _abs_jvp(g: Any, out: Any, x: Any) -> Any:
    return bind("select", bind("ge", x, zeros_like(x)), g, neg_p.bind(g))


abs_p = _unary("abs", hlo.abs, (_abs_jvp,), kinds="fi")


def _sign_lower(ctx: Any, x: Any) -> Any:
    if jx.kind_of(ctx.avals_in[0].dtype) != "u":
        return hlo.sign(x)
    # stablehlo.sign takes no unsigned operands: sign(x) = (x != 0)
    nonzero = hlo.compare(x, ctx.full(0), hlo.ComparisonDirectionAttr.get("NE"),
                          compare_type=hlo.ComparisonTypeAttr.get("UNSIGNED"))
    return hlo.select(nonzero, ctx.full(1), ctx.full(0))


sign_p = define_primitive("sign", abstract_eval=_typed_eval("sign", "fiu"), lowering=_sign_lower,
                          jvp=ZERO_DERIVATIVE, elementwise=True)


# max/min: the operand that wins takes the whole derivative, at ties each takes half (as
# jax.grad). The weights come from comparing the operands with each other, not with the result:
# under jit XLA may recompute an operand with a fused multiply-add in one fusion and without in
# another, and a bitwise comparison with a result computed elsewhere could then miss for both
# operands and lose the derivative. Compared with each other, the weights always sum to one.
def _share(wins: str) -> Any:
    def weight(x: Any, y: Any, out: Any) -> Any:
        one, half, zero = full_like(out, 1), full_like(out, 0.5), zeros_like(out)
        return bind("select", bind(wins, x, y), one,
                    bind("select", bind("eq", x, y), half, zero))
    return (lambda g, out, x, y: mul_p.bind(g, weight(x, y, out)),
            lambda g, out, x, y: mul_p.bind(g, weight(y, x, out)))


max_p = _binary("max", hlo.maximum, _share("gt"), kinds="fiub")
min_p = _binary("min", hlo.minimum, _share("lt"), kinds="fiub")


# --- powers --------------------------------------------------------------------------------------

def _replace_zero(x: Any) -> Any:
    return bind("select", bind("eq", x, zeros_like(x)), full_like(x, 1), x)


def _pow_jvp_base(g: Any, out: Any, x: Any, y: Any) -> Any:
    # d/dx x^y = y x^(y-1); for integer exponents taken as 0 where y == 0 (as in jax.grad)
    jac = mul_p.bind(y, pow_p.bind(x, sub_p.bind(y, full_like(y, 1))))
    if jx.kind_of(dtype_of(y)) != "f":
        jac = bind("select", bind("eq", y, zeros_like(y)), zeros_like(y), jac)
    return mul_p.bind(g, jac)


def _pow_jvp_exponent(g: Any, out: Any, x: Any, y: Any) -> Any:
    # d/dy x^y = log(x) x^y, with log(0) replaced by 0 so a zero base gives a zero derivative
    return mul_p.bind(g, mul_p.bind(log_p.bind(_replace_zero(x)), out))


pow_p = _binary("pow", hlo.power, (_pow_jvp_base, _pow_jvp_exponent), kinds="fiu")


def _integer_pow_lower(ctx: Any, x: Any, *, y: int) -> Any:
    # exponentiation by squaring, as lax does: O(log |y|) multiplies
    n = -y if y < 0 else y
    acc, base = None, x
    while n:
        if n & 1:
            acc = base if acc is None else hlo.multiply(acc, base)
        n >>= 1
        if n:
            base = hlo.multiply(base, base)
    if acc is None:
        return ctx.full(1)
    return hlo.divide(ctx.full(1), acc) if y < 0 else acc


def _integer_pow_jvp(g: Any, out: Any, x: Any, *, y: int) -> Any:
    if y == 0:
        return None
    if y == 1:
        return g
    lower = x if y == 2 else integer_pow_p.bind(x, y=y - 1)
    return mul_p.bind(g, mul_p.bind(full_like(x, y), lower))


integer_pow_p = define_primitive(
    "integer_pow", abstract_eval=_typed_eval("integer_pow", "fiu"), lowering=_integer_pow_lower,
    jvp=(_integer_pow_jvp,), elementwise=True)

# --- tan, erf -------------------------------------------------------------------------------------

# tan' = 1 + tan^2 (written with the output, as lax does)
tan_p = _unary("tan", hlo.tan, (lambda g, out, x: mul_p.bind(
    g, add_p.bind(full_like(out, 1), square_p.bind(out))),), kinds="f")
# erf' = 2/sqrt(pi) exp(-x^2)
erf_p = _unary("erf", lambda x: jx.chlo.erf(x), (lambda g, out, x: mul_p.bind(
    full_like(x, 2 / np.sqrt(np.pi)), mul_p.bind(g, exp_p.bind(neg_p.bind(square_p.bind(x))))),),
    kinds="f")

# --- rounding: piecewise constant ---------------------------------------------------------------

floor_p = _unary("floor", hlo.floor, ZERO_DERIVATIVE, kinds="f")
ceil_p = _unary("ceil", hlo.ceil, ZERO_DERIVATIVE, kinds="f")
ROUND_AWAY_FROM_ZERO, ROUND_TO_NEAREST_EVEN = 0, 1  # lax.RoundingMethod's values


def _round_lower(ctx: Any, x: Any, *, rounding_method: int) -> Any:
    if rounding_method == ROUND_TO_NEAREST_EVEN:
        return hlo.round_nearest_even(x)
    return hlo.round_nearest_afz(x)


round_p = define_primitive(
    "round", abstract_eval=_typed_eval("round", "f"), lowering=_round_lower,
    jvp=ZERO_DERIVATIVE, elementwise=True)

# --- rem(x, y) = x - y * trunc(x / y) (C's fmod: the sign of x) ---------------------------------
# d/dx = 1, d/dy = -trunc(x / y), with trunc spelled sign * floor(abs) as lax does.

rem_p = _binary("rem", hlo.remainder, (
    lambda g, out, x, y: g,
    lambda g, out, x, y: mul_p.bind(neg_p.bind(g), mul_p.bind(
        sign_p.bind(div_p.bind(x, y)), floor_p.bind(abs_p.bind(div_p.bind(x, y)))))))


# --- clamp(lo, x, hi) = min(max(x, lo), hi), with lax.clamp's derivative -----------------------
# x's derivative is 1 strictly inside (lo, hi); lo's where lo > x (and lo < hi); hi's where
# hi < x. At x == lo or x == hi no operand gets it (unlike max/min, which share ties).

def _both(p: Any, q: Any) -> Any:
    return bind("select", p, q, full_like(q, False))


clamp_p = define_primitive(
    "clamp", abstract_eval=_typed_eval("clamp", "fiu"),
    lowering=lambda ctx, lo, x, hi: hlo.clamp(lo, x, hi),
    jvp=(lambda g, out, lo, x, hi: bind(
             "select", _both(bind("gt", lo, x), bind("lt", lo, hi)), g, zeros_like(g)),
         lambda g, out, lo, x, hi: bind(
             "select", _both(bind("gt", x, lo), bind("lt", x, hi)), g, zeros_like(g)),
         lambda g, out, lo, x, hi: bind("select", bind("lt", hi, x), g, zeros_like(g))),
    elementwise=True)


# ----------------------------------------------------------------------------------------------
# NumPy-style wrappers
# ----------------------------------------------------------------------------------------------

@op()
def add(x: Any, y: Any) -> Any:
    """x + y with NumPy broadcasting and dtype promotion."""
    return add_p.bind(*promote("add", x, y))


@op()
def subtract(x: Any, y: Any) -> Any:
    """x - y."""
    return sub_p.bind(*promote("subtract", x, y))


@op()
def multiply(x: Any, y: Any) -> Any:
    """x * y."""
    return mul_p.bind(*promote("multiply", x, y))


@op()
def divide(x: Any, y: Any) -> Any:
    """True division x / y (integers are promoted to floating point, as in NumPy)."""
    return div_p.bind(*promote("divide", x, y, to_inexact=True))


@op()
def negative(x: Any) -> Any:
    """-x."""
    return neg_p.bind(*promote("negative", x))


@op()
def maximum(x: Any, y: Any) -> Any:
    """Elementwise maximum (ties share the derivative equally)."""
    return max_p.bind(*promote("maximum", x, y))


@op()
def minimum(x: Any, y: Any) -> Any:
    """Elementwise minimum (ties share the derivative equally)."""
    return min_p.bind(*promote("minimum", x, y))


def power(x: Any, y: Any) -> Any:
    """x ** y. A Python integer exponent gives the `integer_pow` primitive (exact, any sign)."""
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        return _integer_power(x, y=int(y))
    return _real_power(x, y)


@op(static_argnames=("y",))
def _integer_power(x: Any, *, y: int) -> Any:
    (x,) = promote("power", x, to_inexact=y < 0)
    return integer_pow_p.bind(x, y=y)


@op()
def _real_power(x: Any, y: Any) -> Any:
    return pow_p.bind(*promote("power", x, y))


def _unary_wrapper(prim: Primitive, name: str, doc: str, inexact: bool) -> Callable[[Any], Any]:
    def fn(x: Any) -> Any:
        return prim.bind(promote_inexact(name, x) if inexact else promote(name, x)[0])

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return op()(fn)


@op()
def square(x: Any) -> Any:
    """x * x (booleans are squared as integers, as in jax.numpy)."""
    (x,) = promote("square", x)
    if jx.kind_of(dtype_of(x)) == "b":
        x = convert(x, jx.canonical_dtype(np.int64))
    return square_p.bind(x)
sqrt = _unary_wrapper(sqrt_p, "sqrt", "Square root (derivative +inf at 0, as in jax.grad).", True)
exp = _unary_wrapper(exp_p, "exp", "e ** x.", True)
log = _unary_wrapper(log_p, "log", "Natural logarithm.", True)
log1p = _unary_wrapper(log1p_p, "log1p", "log(1 + x), accurate for small x.", True)
expm1 = _unary_wrapper(expm1_p, "expm1", "exp(x) - 1, accurate for small x.", True)
sin = _unary_wrapper(sin_p, "sin", "Sine.", True)
cos = _unary_wrapper(cos_p, "cos", "Cosine.", True)
tanh = _unary_wrapper(tanh_p, "tanh", "Hyperbolic tangent.", True)
sigmoid = _unary_wrapper(logistic_p, "sigmoid", "Logistic sigmoid 1 / (1 + exp(-x)).", True)
_abs_signed = _unary_wrapper(abs_p, "abs", "", inexact=False)


def abs(x: Any) -> Any:
    """Absolute value (derivative 1 at 0, as in jax.grad); unsigned and boolean input as is."""
    if jx.kind_of(dtype_of(x)) in "ub":
        return x
    return _abs_signed(x)
sign = _unary_wrapper(sign_p, "sign", "Sign: -1, 0 or 1 (derivative zero).", False)
tan = _unary_wrapper(tan_p, "tan", "Tangent (derivative 1 + tan^2, as lax).", True)
erf = _unary_wrapper(erf_p, "erf", "The error function, as jax.scipy.special.erf.", True)


def clip(x: Any, min: Any = None, max: Any = None) -> Any:
    """`x` limited to [min, max] (either bound may be None), as jnp.clip: maximum(min, x) then
    minimum(max, x), with their promotion, broadcasting and derivative (a tie with a bound
    shares it equally, as in jax.grad of jnp.clip)."""
    if min is not None:
        x = maximum(min, x)
    if max is not None:
        x = minimum(max, x)
    return x
