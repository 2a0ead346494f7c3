"""Pipeline-parallel training: a MovieLens rating regressor split into stages on devices.

Every rating (user, movie, stars) of ml-latest-small is an example: stage 0 looks up a user
and a movie embedding (ap.take) and applies a tanh layer, the middle stages are tanh layers,
the last stage maps to a predicted rating (offset by the training mean), and the loss is the
mean squared error. The stages live on different devices and train with microbatches under a
GPipe or 1F1B schedule (`ap.Pipeline`, see adplugin/placement/pipeline.py) with one Adam state
per stage on its stage's device (optax).

The script prints where each stage runs, the schedule as a timeline with its bubble fraction,
a check of the pipeline's gradients against `jax.grad` of the unsplit model on the first
batch, the training loss, and the test RMSE before and after training next to the baseline of
predicting the training mean.

    python examples/pipeline_parallel.py [--num_devices 4] [--stages 4] [--microbatches 8]
        [--schedule gpipe|1f1b] [--steps 300] [--batch 1024] [--embed 16] [--hidden 64]
        [--learning_rate 0.003] [--seed 0] [--data DIR] [--small]

--num_devices forces that many host (CPU) devices through XLA_FLAGS before JAX starts (on a
machine with accelerators, JAX's default devices are used); with fewer devices than stages,
the stages share devices in contiguous blocks, and the same program runs on one device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    from _cli import force_host_devices

    force_host_devices(sys.argv, default=4)

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402

import adplugin as ap  # noqa: E402
from adplugin.placement.pipeline import Pipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import movielens  # noqa: E402


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_integer("num_devices", 4, "host (CPU) devices to force before JAX starts",
                         flag_values=fv)
    flags.DEFINE_integer("stages", 4, "pipeline stages (>= 2)", flag_values=fv)
    flags.DEFINE_integer("microbatches", 8, "microbatches per step", flag_values=fv)
    flags.DEFINE_enum("schedule", "gpipe", ["gpipe", "1f1b"], "pipeline schedule",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 300, "Adam steps", flag_values=fv)
    flags.DEFINE_integer("batch", 1024, "ratings per step (a multiple of --microbatches)",
                         flag_values=fv)
    flags.DEFINE_integer("embed", 16, "embedding size of users and movies", flag_values=fv)
    flags.DEFINE_integer("hidden", 64, "width of the hidden layers", flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.003, "Adam learning rate", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the split, the batches and the initial weights",
                         flag_values=fv)
    flags.DEFINE_string("data", str(movielens.DEFAULT_ML_LATEST_SMALL),
                        "ml-latest-small directory", flag_values=fv)
    flags.DEFINE_bool("small", False, "a quick run (tests): 40 steps of 256 ratings",
                      flag_values=fv)


# --- data -----------------------------------------------------------------------------------------

def load_ratings(directory: str | Path, seed: int = 0,
                 test_fraction: float = 0.1) -> dict[str, Any]:
    """Every rating as (user index, movie index) -> stars, shuffled and split train/test."""
    ml = movielens.load_ml_latest_small(directory)
    movie, user = np.nonzero(ml["R"])
    stars = ml["Y"][movie, user].astype(np.float32)
    ids = np.stack([user, movie], axis=1).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(stars))
    n_test = int(len(stars) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return {"train_x": ids[train], "train_y": stars[train], "test_x": ids[test],
            "test_y": stars[test], "n_users": ml["Y"].shape[1], "n_movies": ml["Y"].shape[0]}


# --- the model, split into stages ---------------------------------------------------------------

def dense(params: dict[str, Any], h: Any) -> Any:
    return ap.tanh(ap.add(ap.matmul(h, params["w"]), params["b"]))


def embed_stage(params: dict[str, Any], ids: Any) -> Any:
    """Stage 0: [user embedding, movie embedding] -> a tanh layer."""
    u = ap.take(params["users"], ids[:, 0], axis=0)
    m = ap.take(params["movies"], ids[:, 1], axis=0)
    return dense(params, ap.concatenate([u, m], axis=1))


def output_stage(mean: float) -> Callable[[dict[str, Any], Any], Any]:
    """The last stage: a tanh layer, then a linear map to one rating per example."""
    def stage(params: dict[str, Any], h: Any) -> Any:
        h = dense(params["hidden"], h)
        return ap.add(ap.reshape(ap.matmul(h, params["out"]), (-1,)), mean)
    return stage


def mse(pred: Any, stars: Any) -> Any:
    return ap.mean(ap.square(ap.subtract(pred, stars)))


def make_model(n_users: int, n_movies: int, stages: int, embed: int, hidden: int, mean: float,
               seed: int) -> tuple[list[Callable[[Any, Any], Any]], list[Any]]:
    """The stage functions and their initial parameters (numpy, on the host)."""
    if stages < 2:
        raise ValueError(f"--stages={stages}; expected at least 2 (an embedding stage and an "
                         "output stage). Fix: pass --stages 2 or more")
    rng = np.random.default_rng(seed)

    def layer(n_in: int, n_out: int) -> dict[str, np.ndarray]:
        return {"w": (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
                "b": np.zeros(n_out, np.float32)}

    first = {"users": (0.1 * rng.normal(size=(n_users, embed))).astype(np.float32),
             "movies": (0.1 * rng.normal(size=(n_movies, embed))).astype(np.float32),
             **layer(2 * embed, hidden)}
    middle = [layer(hidden, hidden) for _ in range(stages - 2)]
    last = {"hidden": layer(hidden, hidden),
            "out": (rng.normal(size=(hidden, 1)) / np.sqrt(hidden)).astype(np.float32)}
    fns = [embed_stage, *[dense] * (stages - 2), output_stage(mean)]
    return fns, [first, *middle, last]


# --- training -----------------------------------------------------------------------------------

def gradient_check(pipe: Pipeline, params: list[Any], x: Any, y: Any) -> float:
    """Max |pipeline gradient - jax.grad of the unsplit model| over max |jax.grad|."""
    model = pipe.unsplit()
    host = jax.device_get(params)
    want = jax.jit(jax.grad(lambda ps: mse(model(ps, x), y)))(host)
    _, got = pipe.value_and_grad(params, x, y)
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    scale = max(float(np.max(np.abs(np.asarray(b)))) for b in jax.tree.leaves(want))
    return err / scale


def rmse(pipe: Pipeline, params: list[Any], x: np.ndarray, y: np.ndarray, chunk: int) -> float:
    n = len(y) - len(y) % chunk
    preds = np.concatenate([np.asarray(pipe.forward(params, x[i:i + chunk]))
                            for i in range(0, n, chunk)])
    return float(np.sqrt(np.mean((preds - y[:n]) ** 2)))


def train(data: dict[str, Any], *, stages: int = 4, microbatches: int = 8,
          schedule: str = "gpipe", steps: int = 300, batch: int = 1024, embed: int = 16,
          hidden: int = 64, learning_rate: float = 0.003, seed: int = 0,
          devices: Any = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the split model; returns the losses, the gradient check and the RMSEs."""
    if batch % microbatches:
        raise ValueError(f"--batch={batch} does not split into --microbatches={microbatches} "
                         "equal parts. Fix: pass a multiple of --microbatches")
    mean = float(data["train_y"].mean())
    fns, init = make_model(data["n_users"], data["n_movies"], stages, embed, hidden, mean, seed)
    pipe = Pipeline(fns, mse, microbatches=microbatches, schedule=schedule, devices=devices)
    params = pipe.place(init)
    emit(repr(pipe))
    emit(pipe.schedule.timeline())

    rng = np.random.default_rng(seed + 1)
    x_train, y_train = data["train_x"], data["train_y"]
    first = rng.integers(0, len(y_train), batch)
    rel = gradient_check(pipe, params, x_train[first], y_train[first])
    emit(f"gradient check on the first batch: max |pipeline - jax.grad| / max |jax.grad| = "
         f"{rel:.2e}")

    opt = optax.adam(learning_rate)
    states = [jax.device_put(opt.init(ps), d) for ps, d in zip(params, pipe.devices)]

    @jax.jit
    def update(g: Any, state: Any, ps: Any) -> tuple[Any, Any]:
        updates, state = opt.update(g, state, ps)
        return optax.apply_updates(ps, updates), state

    chunk = 4 * batch
    test_before = rmse(pipe, params, data["test_x"], data["test_y"], chunk)
    losses: list[float] = []
    pending: list[Any] = []
    every = max(1, steps // 10)
    transfers = 0
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(y_train), batch)
        r = pipe.run(params, x_train[idx], y_train[idx])
        transfers = r.transfers
        # each stage's Adam step runs on that stage's device
        new = [update(g, st, ps) for g, st, ps in zip(r.grads, states, params)]
        params, states = [n[0] for n in new], [n[1] for n in new]
        pending.append(r.loss)
        if step % every == 0 or step == steps:
            losses += [float(v) for v in pending]  # reading the losses waits for them
            pending = []
            emit(f"step {step:4d}: training loss {np.mean(losses[-every:]):.4f}")
    test_after = rmse(pipe, params, data["test_x"], data["test_y"], chunk)
    baseline = float(np.sqrt(np.mean((data["test_y"] - mean) ** 2)))
    k = max(1, len(losses) // 10)
    first_loss, last_loss = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    emit(f"training loss: {first_loss:.4f} (first {k} steps) -> {last_loss:.4f} (last {k})")
    emit(f"test RMSE: {test_before:.4f} before, {test_after:.4f} after; predicting the mean: "
         f"{baseline:.4f}")
    emit(f"{transfers} transfers per step = 2(p-1)m = 2*{stages - 1}*{microbatches}; bubble "
         f"{pipe.schedule.bubble_fraction:.1%} = (p-1)/(m+p-1)")
    return {"losses": losses, "first_loss": first_loss, "last_loss": last_loss,
            "grad_rel_error": rel, "test_before": test_before, "test_after": test_after,
            "baseline": baseline, "transfers": transfers, "pipeline": pipe}


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    steps, batch = (40, 256) if F.small else (F.steps, F.batch)
    data = load_ratings(F.data, seed=F.seed)
    print(f"{len(data['train_y'])} training and {len(data['test_y'])} test ratings of "
          f"{data['n_users']} users and {data['n_movies']} movies; {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s)")
    train(data, stages=F.stages, microbatches=F.microbatches, schedule=F.schedule, steps=steps,
          batch=batch, embed=F.embed, hidden=F.hidden, learning_rate=F.learning_rate,
          seed=F.seed)


if __name__ == "__main__":
    define_flags()
    from _cli import run_main
    run_main(main)
