"""Plain gradient descent on J(w) = (w·x − 1)² with a GradientTape and `assign_sub`.

From w₀ = 3, x = 1, α = 0.01: each step takes dJ/dw = 2x(w·x − 1) from the tape and updates
w ← w − α dJ/dw. The iterates have a closed form: w_k − 1/x = (w₀ − 1/x)(1 − 2αx²)^k, so w
approaches 1/x geometrically (for 0 < α < 1/x²) and J_k = (w_k x − 1)².

    python examples/gradient_descent.py [--steps 30] [--alpha 0.01] [--w0 3] [--x 1]
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

import adplugin as ap


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_integer("steps", 30, "gradient-descent steps", flag_values=fv)
    flags.DEFINE_float("alpha", 0.01, "learning rate α", flag_values=fv)
    flags.DEFINE_float("w0", 3.0, "initial weight", flag_values=fv)
    flags.DEFINE_float("x", 1.0, "the input x", flag_values=fv)


def run(steps: int = 30, alpha: float = 0.01, w0: float = 3.0, x: float = 1.0,
        emit: Callable[[str], None] | None = None) -> list[tuple[float, float]]:
    """(w, J) before each of `steps` updates and after the last: steps + 1 pairs."""
    w = ap.Variable(w0, name="w")
    history = []
    for k in range(steps + 1):
        with ap.GradientTape() as tape:
            J = ap.square(w * x - 1.0)
        history.append((float(w.numpy()), float(J)))
        if emit is not None:
            emit(f"step {k:3d}: w = {history[-1][0]:.6f}, J = {history[-1][1]:.6f}")
        if k == steps:
            break
        (dJ_dw,) = tape.gradient(J, [w])
        w.assign_sub(alpha * dJ_dw)
    return history


def closed_form(k: int, alpha: float = 0.01, w0: float = 3.0, x: float = 1.0) -> float:
    """w_k = 1/x + (w₀ − 1/x)(1 − 2αx²)^k."""
    return 1 / x + (w0 - 1 / x) * (1 - 2 * alpha * x * x) ** k


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    print(f"J(w) = (w·x − 1)², x = {F.x:g}, α = {F.alpha:g}, w₀ = {F.w0:g}")
    history = run(F.steps, F.alpha, F.w0, F.x, emit=print)
    w, J = history[-1]
    print(f"after {F.steps} steps: w = {w:.6f} (closed form "
          f"{closed_form(F.steps, F.alpha, F.w0, F.x):.6f}, minimum at 1/x = {1 / F.x:g}), "
          f"J = {J:.6f}")


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
