"""Linear regression y = W·x + b with ap.Variables, a GradientTape and an ap.optimizers optimizer.

The data are the classic TensorFlow example's 17 training and 8 test points. The loss is the
classic example's cost, half the mean squared error: ½·mean((W·x + b − y)²). Training uses SGD
with momentum (full batch); the result is compared with the least-squares line (np.polyfit),
and the data, the fitted line and the least-squares line are plotted (matplotlib, Agg backend).

    python examples/linear_regression.py [--steps 1000] [--learning_rate 0.02]
                                         [--momentum 0.9] [--seed 0]
                                         [--plot linear_regression.png]   (--plot= for none)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm import tqdm

import adplugin as ap

TRAIN_X = np.array([3.3, 4.4, 5.5, 6.71, 6.93, 4.168, 9.779, 6.182, 7.59, 2.167, 7.042, 10.791,
                    5.313, 7.997, 5.654, 9.27, 3.1], np.float32)
TRAIN_Y = np.array([1.7, 2.76, 2.09, 3.19, 1.694, 1.573, 3.366, 2.596, 2.53, 1.221, 2.827,
                    3.465, 1.65, 2.904, 2.42, 2.94, 1.3], np.float32)
TEST_X = np.array([6.83, 4.668, 8.9, 7.91, 5.7, 8.7, 3.1, 2.1], np.float32)
TEST_Y = np.array([1.84, 2.273, 3.2, 2.831, 2.92, 3.24, 1.35, 1.03], np.float32)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_integer("steps", 1000, "full-batch training steps", flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.02, "SGD learning rate", flag_values=fv)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum (0 for plain gradient descent)",
                       flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the random initial W and b", flag_values=fv)
    flags.DEFINE_string("plot", "linear_regression.png", "write the plot here (PNG); empty "
                        "for no plot", flag_values=fv)


def half_mse(W: Any, b: Any, x: Any, y: Any) -> Any:
    """½·mean((W·x + b − y)²), the classic example's cost, with ap.* ops."""
    return ap.multiply(0.5, ap.mean(ap.square(ap.subtract(ap.add(ap.multiply(W, x), b), y))))


def least_squares() -> tuple[float, float]:
    """(W, b) of the least-squares line through the training data (float64)."""
    W, b = np.polyfit(TRAIN_X.astype(np.float64), TRAIN_Y.astype(np.float64), 1)
    return float(W), float(b)


def train(steps: int = 1000, learning_rate: float = 0.02, momentum: float = 0.9, seed: int = 0,
          progress: bool = False) -> dict[str, Any]:
    """Fit W and b; returns them, the train/test ½-MSE, the loss history and least squares."""
    rng = np.random.default_rng(seed)
    W = ap.Variable(np.float32(rng.standard_normal()), name="W")
    b = ap.Variable(np.float32(rng.standard_normal()), name="b")
    opt = ap.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    x, y = jnp.asarray(TRAIN_X), jnp.asarray(TRAIN_Y)
    losses = []
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for step in bar:
        with ap.GradientTape() as tape:
            loss = half_mse(W, b, x, y)
        grads = tape.gradient(loss, [W, b])
        opt.apply_gradients(zip(grads, [W, b]))
        losses.append(float(loss))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.6f}")
    W_ls, b_ls = least_squares()
    w, c = float(W.numpy()), float(b.numpy())
    return {
        "W": w, "b": c, "losses": losses,
        "train_half_mse": float(half_mse(w, c, TRAIN_X, TRAIN_Y)),
        "test_half_mse": float(half_mse(w, c, TEST_X, TEST_Y)),
        "W_lstsq": W_ls, "b_lstsq": b_ls,
        "train_half_mse_lstsq": float(half_mse(W_ls, b_ls, TRAIN_X, TRAIN_Y)),
        "test_half_mse_lstsq": float(half_mse(W_ls, b_ls, TEST_X, TEST_Y)),
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Training and test points, the trained line and the least-squares line, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(TRAIN_X, TRAIN_Y, "o", label="training data")
    ax.plot(TEST_X, TEST_Y, "s", label="test data")
    xs = np.linspace(0, 1.05 * float(max(TRAIN_X.max(), TEST_X.max())), 2)
    ax.plot(xs, result["W"] * xs + result["b"], "-",
            label=f"trained: y = {result['W']:.4f} x + {result['b']:.4f}")
    ax.plot(xs, result["W_lstsq"] * xs + result["b_lstsq"], "--",
            label=f"least squares: y = {result['W_lstsq']:.4f} x + {result['b_lstsq']:.4f}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(r: dict[str, Any], emit: Callable[[str], None] = print) -> None:
    emit(f"final training loss ½·mean((Wx + b − y)²): {r['losses'][-1]:.6f}")
    emit(f"trained:       W = {r['W']:.6f}, b = {r['b']:.6f}, train ½-MSE = "
         f"{r['train_half_mse']:.6f}, test ½-MSE = {r['test_half_mse']:.6f}")
    emit(f"least squares: W = {r['W_lstsq']:.6f}, b = {r['b_lstsq']:.6f}, train ½-MSE = "
         f"{r['train_half_mse_lstsq']:.6f}, test ½-MSE = {r['test_half_mse_lstsq']:.6f}")
    emit(f"|W − W_lstsq| = {abs(r['W'] - r['W_lstsq']):.2e}, "
         f"|b − b_lstsq| = {abs(r['b'] - r['b_lstsq']):.2e}")


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    r = train(F.steps, F.learning_rate, F.momentum, F.seed, progress=True)
    report(r)
    if F.plot:
        plot(r, F.plot)
        print(f"wrote {F.plot}")


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
