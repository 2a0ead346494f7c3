"""A tensor-parallel MLP on MovieLens ratings, sharded by the planner (`ap.plan_sharding`).

The model reconstructs each movie's ratings from themselves through a wide hidden layer (an
autoencoder over the users' ratings, the loss counting rated entries only):

    h = tanh(Y_batch W0),  out = h W1,  loss = sum(R (out - Y)^2) / sum(R)

W0 (users x hidden) and W1 (hidden x users) are `ap.Variable`s, so the weights dominate the
memory. The script builds the step as a graph (loss and TF1-style SGD update), asks the planner
for the inputs' shardings (`scope="inputs"`) on a 1-D mesh of --num_devices host devices under
a memory budget that rules out replication (half of what replication needs), prints its table,
applies it (the variables are resharded: W0 by columns, W1 by rows, Megatron's tensor
parallelism), checks the predicted collectives against the compiled HLO, and trains. The same
steps run unsharded on one device; the losses must agree. A summary line ends the output.

    python examples/tensor_parallel_mlp.py [--num_devices 8] [--steps 30] [--hidden 2048]
        [--batch 64] [--learning_rate 0.5] [--seed 0] [--small]

--num_devices forces that many host (CPU) devices through XLA_FLAGS before JAX starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    from _cli import force_host_devices

    force_host_devices(sys.argv, default=8)

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from tqdm import tqdm  # noqa: E402

import adplugin as ap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import movielens  # noqa: E402


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script)."""
    flags.DEFINE_integer("num_devices", 8, "host (CPU) devices to force before JAX starts",
                         flag_values=fv)
    flags.DEFINE_integer("steps", 30, "SGD steps", flag_values=fv)
    flags.DEFINE_integer("hidden", 2048, "hidden units", flag_values=fv)
    flags.DEFINE_integer("batch", 64, "movies per step", flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.5, "SGD step size", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the initial weights", flag_values=fv)
    flags.DEFINE_string("course_small", str(movielens.DEFAULT_COURSE_SMALL),
                        "the practice set: its CSV directory or the packed .npz", flag_values=fv)
    flags.DEFINE_bool("small", False, "a quick run (tests): 256 hidden units, 5 steps",
                      flag_values=fv)


def load_data(path: str | Path, devices: int) -> dict[str, np.ndarray]:
    """Ratings normalized per movie and the indicator, users trimmed to a multiple of the
    device count (so users split evenly)."""
    course = movielens.load_course_small(path)
    users = (course["Y"].shape[1] // devices) * devices
    Y, R = course["Y"][:, :users], course["R"][:, :users]
    Ynorm, _ = movielens.normalize_ratings(Y, R)
    return {"Y": Ynorm.astype(np.float32), "R": R.astype(np.float32)}


def build(users: int, hidden: int, batch: int, learning_rate: float, seed: int
          ) -> dict[str, Any]:
    """The step's graph: loss, weight gradients and an SGD update of two variables."""
    rng = np.random.default_rng(seed)
    w0 = ap.Variable((rng.standard_normal((users, hidden)) / np.sqrt(users)).astype(np.float32),
                     name="W0")
    w1 = ap.Variable((rng.standard_normal((hidden, users)) / np.sqrt(hidden)).astype(np.float32),
                     name="W1")
    with ap.Graph() as g:
        y = ap.placeholder((batch, users), name="Y")
        r = ap.placeholder((batch, users), name="R")
        out = ap.matmul(ap.tanh(ap.matmul(y, w0)), w1)
        loss = ap.sum(r * ap.square(out - y)) / ap.maximum(ap.sum(r), 1.0)
        grads = ap.gradients(loss, [w0, w1])
        train = ap.optimizers.SGD(learning_rate).minimize(loss, var_list=[w0, w1])
    return {"graph": g, "Y": y, "R": r, "W0": w0, "W1": w1, "loss": loss, "grads": grads,
            "train": train}


def batches(data: dict[str, np.ndarray], batch: int, steps: int) -> list[dict[str, Any]]:
    """The movies with the most ratings first, `batch` at a time, cycling."""
    order = np.argsort(-data["R"].sum(1), kind="stable")
    out = []
    for k in range(steps):
        rows = order[(k * batch) % (len(order) - batch):][:batch]
        out.append({"Y": data["Y"][rows], "R": data["R"][rows]})
    return out


def train(m: dict[str, Any], feeds: list[dict[str, Any]], label: str) -> list[float]:
    losses = []
    for f in tqdm(feeds, desc=f"SGD {label}", leave=False):
        fed = {m["Y"]: f["Y"], m["R"]: f["R"]}
        losses.append(float(m["graph"].run(m["loss"], fed)))
        m["graph"].run(m["train"], fed)
    return losses


def tour(data: dict[str, np.ndarray], hidden: int, batch: int, steps: int,
         learning_rate: float, seed: int, emit: Any = print) -> dict[str, Any]:
    n = len(jax.devices())
    users = data["Y"].shape[1]
    mesh = jax.make_mesh((n,), ("model",), axis_types=(AxisType.Auto,))
    m = build(users, hidden, batch, learning_rate, seed)
    g, outs = m["graph"], [m["loss"], *m["grads"]]
    feeds = batches(data, batch, steps)
    fed = {m["Y"]: feeds[0]["Y"], m["R"]: feeds[0]["R"]}

    replicated = ap.plan_sharding(g, mesh, outputs=outs, fixed={
        m["Y"]: None, m["R"]: None, m["W0"]: None, m["W1"]: None}, scope="inputs")
    budget = replicated.cost.memory_bytes // 2
    emit(f"== the planner: {n} devices, budget {budget} bytes per device (replication needs "
         f"{replicated.cost.memory_bytes}) ==")
    # the inputs' shardings only, the rest propagated: the Megatron layout this script shows
    # (the default, scope="nodes", plans every node and may mix layouts for fewer bytes)
    plan = ap.plan_sharding(g, mesh, outputs=outs, memory_budget=budget, scope="inputs")
    check = plan.measure(fed)  # applies the plan: W0 and W1 resharded
    emit(plan.table())
    emit("\n== predicted collectives against the compiled HLO ==")
    emit(check.table())
    chosen = {t.name: plan.spec(t) for t in plan.inputs}
    megatron = chosen["W0"] == (None, "model") and chosen["W1"] == ("model", None)
    emit(f"\nW0 {m['W0'].value.sharding.spec}, W1 {m['W1'].value.sharding.spec}"
         f" (Megatron: columns then rows: {megatron})")

    emit(f"\n== {steps} SGD steps, sharded and on one device ==")
    losses = train(m, feeds, "sharded")
    single = build(users, hidden, batch, learning_rate, seed)
    want = train(single, feeds, "one device")
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, want))
    for k in range(0, steps, max(1, steps // 6)):
        emit(f"step {k:4d}: loss {losses[k]:.5f} (one device {want[k]:.5f})")
    kept = tuple(m["W0"].value.sharding.spec) == (None, "model")  # after the SGD steps
    emit(f"\nsummary: devices={n} plan={'megatron' if megatron else 'other'} "
         f"predicted_ok={check.ok} collective_bytes={plan.cost.comm_bytes} "
         f"loss_first={losses[0]:.6g} loss_last={losses[-1]:.6g} "
         f"decreased={losses[-1] < losses[0]} max_rel_diff={rel:.3g} agree={rel <= 1e-4} "
         f"sharding_kept={kept}")
    return {"plan": plan, "check": check, "losses": losses, "single": want, "rel": rel,
            "megatron": megatron}


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    hidden, steps = (256, 5) if F.small else (F.hidden, F.steps)
    data = load_data(F.course_small, len(jax.devices()))
    print(f"MovieLens practice set: {data['Y'].shape[0]} movies x {data['Y'].shape[1]} users, "
          f"{int(data['R'].sum())} ratings; {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s)")
    tour(data, hidden, F.batch, steps, F.learning_rate, F.seed)


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
