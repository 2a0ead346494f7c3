"""How much of `jax.numpy` and `jax.nn` `ap.trace` converts.

A representative list of `jax.numpy` and `jax.nn` functions (each with small example
arguments) is recorded with `jax.make_jaxpr`; the JAX primitives their jaxprs use (nested
bodies included) are the primitives reachable from them. `coverage()` counts how many of those
have a conversion, and for how many functions `ap.trace` converts the whole jaxpr.

    python -m adplugin.frontends.coverage
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin.frontends.interpret import TraceError, adplugin_primitive
from adplugin.frontends.regions import _sub_jaxprs
from adplugin.frontends.trace import supported_primitives, trace

__all__ = ["Coverage", "FUNCTIONS", "coverage", "reachable_primitives"]

_X = np.linspace(0.1, 0.9, 12, dtype=np.float32).reshape(3, 4)  # in (0, 1): every domain fits
_Y = np.linspace(1.2, 2.3, 12, dtype=np.float32).reshape(3, 4)  # > 1 (arccosh)
_I = (np.arange(12, dtype=np.int32) % 5).reshape(3, 4)
_V = np.linspace(-1.0, 1.0, 4, dtype=np.float32)

# name -> (function, example arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}


def _add(prefix: str, names: str, args: tuple[Any, ...], module: Any) -> None:
    for name in names.split():
        FUNCTIONS[f"{prefix}.{name}"] = (getattr(module, name), args)


_add("jnp", "abs absolute negative positive sign floor ceil round rint trunc exp exp2 "
     "expm1 log log2 log10 log1p sqrt cbrt square reciprocal sin cos tan arcsin arccos "
     "arctan sinh cosh tanh arcsinh arctanh deg2rad rad2deg sinc isfinite isnan isinf "
     "signbit nan_to_num sum prod mean var std max min amax amin argmax argmin all any ptp "
     "median cumsum cumprod nansum nanmean nanmax count_nonzero sort argsort ravel "
     "transpose flip diag diagonal trace tril triu squeeze atleast_2d", (_X,), jnp)
_add("jnp", "arccosh", (_Y,), jnp)
_add("jnp", "add subtract multiply divide true_divide floor_divide power float_power mod "
     "remainder fmod maximum minimum fmax fmin arctan2 hypot logaddexp logaddexp2 copysign "
     "heaviside equal not_equal less less_equal greater greater_equal isclose inner outer "
     "kron", (_X, _Y), jnp)
_add("jnp", "logical_and logical_or logical_xor", (_X > 0.5, _Y > 2.0), jnp)
_add("jnp", "logical_not", (_X > 0.5,), jnp)
_add("nn", "relu relu6 sigmoid softplus soft_sign silu swish gelu elu leaky_relu celu selu "
     "glu hard_tanh hard_sigmoid hard_silu log_sigmoid logsumexp softmax log_softmax "
     "standardize squareplus mish sparse_plus sparse_sigmoid", (_X,), jax.nn)
FUNCTIONS.update({
    "jnp.where": (lambda x, y: jnp.where(x > 0.5, x, y), (_X, _Y)),
    "jnp.clip": (lambda x: jnp.clip(x, 0.2, 0.7), (_X,)),
    "jnp.reshape": (lambda x: jnp.reshape(x, (4, 3)), (_X,)),
    "jnp.swapaxes": (lambda x: jnp.swapaxes(x, 0, 1), (_X,)),
    "jnp.moveaxis": (lambda x: jnp.moveaxis(x, 0, 1), (_X,)),
    "jnp.expand_dims": (lambda x: jnp.expand_dims(x, 1), (_X,)),
    "jnp.concatenate": (lambda x, y: jnp.concatenate([x, y], axis=1), (_X, _Y)),
    "jnp.stack": (lambda x, y: jnp.stack([x, y]), (_X, _Y)),
    "jnp.hstack": (lambda x, y: jnp.hstack([x, y]), (_X, _Y)),
    "jnp.vstack": (lambda x, y: jnp.vstack([x, y]), (_X, _Y)),
    "jnp.split": (lambda x: jnp.split(x, 2, axis=1), (_X,)),
    "jnp.tile": (lambda x: jnp.tile(x, (2, 1)), (_X,)),
    "jnp.repeat": (lambda x: jnp.repeat(x, 2, axis=0), (_X,)),
    "jnp.roll": (lambda x: jnp.roll(x, 1, axis=1), (_X,)),
    "jnp.pad": (lambda x: jnp.pad(x, ((1, 0), (0, 2))), (_X,)),
    "jnp.broadcast_to": (lambda x: jnp.broadcast_to(x, (2, 3, 4)), (_X,)),
    "jnp.take": (lambda x, i: jnp.take(x, i, axis=1), (_X, _I[0, :3])),
    "jnp.take_along_axis": (lambda x, i: jnp.take_along_axis(x, i % 4, axis=1), (_X, _I)),
    "jnp.dot": (lambda x, y: jnp.dot(x, y.T), (_X, _Y)),
    "jnp.matmul": (lambda x, y: x @ y.T, (_X, _Y)),
    "jnp.einsum": (lambda x, y: jnp.einsum("ij,kj->ik", x, y), (_X, _Y)),
    "jnp.linalg.norm": (jnp.linalg.norm, (_X,)),
    "jnp.average": (lambda x, y: jnp.average(x, axis=1, weights=y), (_X, _Y)),
    "jnp.percentile": (lambda x: jnp.percentile(x, 30.0), (_X,)),
    "jnp.quantile": (lambda x: jnp.quantile(x, 0.3, axis=1), (_X,)),
    "jnp.searchsorted": (lambda v, x: jnp.searchsorted(v, x), (_V, _X)),
    "jnp.interp": (lambda x, v: jnp.interp(x, v, v * 2), (_X, _V)),
    "jnp.cumsum(axis)": (lambda x: jnp.cumsum(x, axis=1), (_X,)),
    "jnp.diff": (lambda x: jnp.diff(x, axis=1), (_X,)),
    "jnp.convolve": (lambda v: jnp.convolve(v, v), (_V,)),
    "jnp.x.at[i].set": (lambda x, i: x.at[i[0]].set(0.0), (_X, _I)),
    "jnp.x.at[i].add": (lambda x, i: x.at[i[0, :3]].add(1.0), (_X, _I)),
    "jnp.x[i]": (lambda x, i: x[i[0, :3]], (_X, _I)),
    "jnp.bincount": (lambda i: jnp.bincount(i.ravel(), length=5), (_I,)),
    "nn.one_hot": (lambda i: jax.nn.one_hot(i, 5), (_I,)),
    "nn.gelu(exact)": (lambda x: jax.nn.gelu(x, approximate=False), (_X,)),
    "nn.leaky_relu(slope)": (lambda x: jax.nn.leaky_relu(x, 0.2), (_X,)),
})


def _names(jaxprs: Sequence[Any], out: set[str]) -> set[str]:
    for jaxpr in jaxprs:
        for eqn in jaxpr.eqns:
            if adplugin_primitive(eqn.primitive) is None:
                out.add(str(eqn.primitive.name))
            _names(_sub_jaxprs(eqn.params), out)
    return out


def reachable_primitives(fn: Callable[..., Any], *args: Any) -> set[str]:
    """The JAX primitives `fn`'s jaxpr uses at `args`, nested bodies included."""
    return _names([jax.make_jaxpr(fn)(*args).jaxpr], set())


@dataclass
class Coverage:
    """Reachable primitives (name -> functions using it), and the functions `ap.trace`
    converts whole or fails on (with the reason)."""

    primitives: dict[str, list[str]] = field(default_factory=dict)
    traced: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def converted(self) -> list[str]:
        supported = set(supported_primitives())
        return sorted(p for p in self.primitives if p in supported)

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.primitives) - set(self.converted))

    def summary(self) -> str:
        p, f = len(self.primitives), len(self.traced) + len(self.failed)
        lines = [f"primitives reachable from {f} jax.numpy/jax.nn functions: {p}",
                 f"primitives ap.trace converts: {len(self.converted)} of {p} "
                 f"({100 * len(self.converted) / p:.0f}%)",
                 f"functions ap.trace converts whole: {len(self.traced)} of {f} "
                 f"({100 * len(self.traced) / f:.0f}%)",
                 "primitives without a conversion: " + ", ".join(
                     f"{m} ({', '.join(self.primitives[m][:3])})" for m in self.missing)]
        return "\n".join(lines)


def coverage(functions: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
             ) -> Coverage:
    """Trace each function (default: `FUNCTIONS`) and count what converts."""
    result = Coverage()
    for name, (fn, args) in (FUNCTIONS if functions is None else functions).items():
        for prim in sorted(reachable_primitives(fn, *args)):
            result.primitives.setdefault(prim, []).append(name)
        try:
            trace(fn, *args)
        except TraceError as e:
            result.failed[name] = str(e)
        else:
            result.traced.append(name)
    return result


if __name__ == "__main__":
    print(coverage().summary())
