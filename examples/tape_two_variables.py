"""A persistent GradientTape: two variables, a watched constant, a side computation, two targets.

    z  = w1 * x + w2                 w1: Variable (3,), w2: Variable (), x: constant array (3,)
    y1 = Σ z²
    s  = mean(|z|)                   computed under tape.stop_recording(): not recorded, so the
                                     tape treats s as a constant (like jax.lax.stop_gradient)
    y2 = Σ tanh(w2 · z) / s

Variables read inside the tape are watched automatically; `tape.watch(x)` watches the constant
array x as well, so the tape also gives dy/dx. A persistent tape answers several `gradient`
calls: here dy1 and dy2 with respect to (w1, w2, x), and the Jacobian dz/dw1 = diag(x).

Note: after `tape.watch(x)`, compute with ap.* ops (or with the variable on the left, `w1 * x`):
`x * w1` would call jax.Array.__mul__, which jax.numpy computes without recording.

    python examples/tape_two_variables.py [--w1=0.5,-1.0,0.25] [--w2=0.5] [--x=1.0,2.0,3.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import flags

import adplugin as ap


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_list("w1", ["0.5", "-1.0", "0.25"], "initial value of w1", flag_values=fv)
    flags.DEFINE_float("w2", 0.5, "initial value of w2", flag_values=fv)
    flags.DEFINE_list("x", ["1.0", "2.0", "3.0"], "the constant input x (same length as w1)",
                      flag_values=fv)


def compute(w1: Sequence[float] = (0.5, -1.0, 0.25), w2: float = 0.5,
            x: Sequence[float] = (1.0, 2.0, 3.0)) -> dict[str, Any]:
    """Values and gradients (NumPy arrays) of y1 and y2 with respect to w1, w2 and x."""
    v1 = ap.Variable(np.asarray(w1, np.float32), name="w1")
    v2 = ap.Variable(np.float32(w2), name="w2")
    xs = jnp.asarray(x, jnp.float32)
    with ap.GradientTape(persistent=True) as tape:
        tape.watch(xs)
        z = ap.add(ap.multiply(v1, xs), v2)
        y1 = ap.sum(ap.square(z))
        with tape.stop_recording():
            s = ap.mean(ap.abs(z))  # a concrete eager tensor: not on the tape
        y2 = ap.divide(ap.sum(ap.tanh(ap.multiply(v2, z))), s)
    dy1 = tape.gradient(y1, [v1, v2, xs])
    dy2 = tape.gradient(y2, [v1, v2, xs])
    dz_dw1 = tape.jacobian(z, v1)
    del tape  # a persistent tape keeps its recording until it is released
    names = ("w1", "w2", "x")
    return {
        "z": np.asarray(z), "y1": float(y1), "y2": float(y2), "s": float(s),
        "s_recorded": getattr(s, "recording", None) is not None,
        "dy1": {n: np.asarray(g) for n, g in zip(names, dy1)},
        "dy2": {n: np.asarray(g) for n, g in zip(names, dy2)},
        "dz_dw1": np.asarray(dz_dw1),
    }


def report(r: dict[str, Any], emit: Callable[[str], None] = print) -> None:
    emit(f"z = w1*x + w2 = {r['z']}")
    emit(f"y1 = sum(z^2) = {r['y1']:.6f}")
    emit(f"s = mean(|z|) = {r['s']:.6f} (under stop_recording: "
         f"{'recorded!' if r['s_recorded'] else 'a constant for the tape'})")
    emit(f"y2 = sum(tanh(w2*z)) / s = {r['y2']:.6f}")
    for target in ("dy1", "dy2"):
        for name, g in r[target].items():
            emit(f"{target}/d{name} = {g}")
    emit(f"dz/dw1 (tape.jacobian) =\n{r['dz_dw1']}")


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    report(compute([float(v) for v in F.w1], F.w2, [float(v) for v in F.x]))


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
