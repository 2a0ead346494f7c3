"""Sharding strategies against the planner, on 8 host devices, in one run.

Three training steps (loss and weight gradients, as graphs): a batch-heavy MLP (data
parallelism should win), a weight-heavy MLP (Megatron's column-then-row sharding should win),
and the MovieLens collaborative-filtering step (movies x users ratings, movie features X, user
weights W and bias b). For each, four strategies of input shardings over a 1-D mesh "d":

- replicated: every input whole on every device (moves nothing; needs the most memory);
- data_parallel: the batch (MLPs: the examples; CF: the users) split, the weights whole;
- fsdp: the batch and every weight's first dimension split, XLA's propagation deciding the rest
  (propagation from the input annotations alone);
- planner: `ap.plan_sharding` under the memory budget (half of what replication needs).

Per strategy: the HLO collective bytes per step (`ap.collectives` of the compiled step), the
predicted bytes, the peak memory per device (`memory_analysis`: arguments + outputs +
temporaries), the step time (median of timed runs), and whether the strategy fits the budget.
Every strategy's values are checked against the replicated run first. The planner must move
no more bytes than any baseline that fits the budget; the JSON says so per model.

    python benchmarks/sharding.py [--repeats 5] [--quick] [--out FILE]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the XLA flags)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import AxisType, PartitionSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import adplugin as ap  # noqa: E402

HERE = Path(__file__).resolve().parent
flags.DEFINE_integer("repeats", 5, "timed runs per strategy (median reported)")
flags.DEFINE_bool("quick", False, "small sizes, one timed run (for the smoke test)")
flags.DEFINE_string("ratings", str(_common.DEFAULT_RATINGS), "MovieLens ratings (npz or CSV)")
flags.DEFINE_string("out", str(HERE / "results/sharding.json"), "JSON output file")
FLAGS = flags.FLAGS

Model = tuple[ap.Graph, list[Any], dict[Any, np.ndarray], dict[str, str]]


def mlp(batch: int, width: int, hidden: int, seed: int) -> Model:
    """A two-layer MLP step; the roles say which input is the batch and which are weights."""
    rng = np.random.default_rng(seed)
    g = ap.Graph()
    with g:
        x = ap.placeholder((batch, width), name="x")
        w0 = ap.placeholder((width, hidden), name="w0")
        w1 = ap.placeholder((hidden, width), name="w1")
        loss = ap.mean(ap.square(ap.matmul(ap.tanh(ap.matmul(x, w0)), w1)))
        grads = ap.gradients(loss, [w0, w1])
    feed = {t: (rng.standard_normal(t.shape) / np.sqrt(t.shape[0])).astype(np.float32)
            for t in (x, w0, w1)}
    return g, [loss, *grads], feed, {"x": "batch", "w0": "weight", "w1": "weight"}


def collaborative_filtering(features: int, quick: bool) -> Model:
    """The CF cost J = 1/2 sum(((X W^T + b) - Y) R)^2 + lambda/2 (sum X^2 + sum W^2) and its
    gradients, on MovieLens ratings trimmed to multiples of 8 movies and users."""
    y, r = _common.load_ratings(FLAGS.ratings)
    movies, users = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if quick:
        movies, users = min(movies, 512), min(users, 64)
    y, r = y[:movies, :users], r[:movies, :users]
    y = (y - (y * r).sum(1, keepdims=True) / np.maximum(r.sum(1, keepdims=True), 1)) * r
    rng = np.random.default_rng(0)
    g = ap.Graph()
    with g:
        ratings = ap.placeholder((movies, users), name="Y")
        rated = ap.placeholder((movies, users), name="R")
        x = ap.placeholder((movies, features), name="X")
        w = ap.placeholder((users, features), name="W")
        b = ap.placeholder((1, users), name="b")
        err = ap.multiply(ap.matmul(x, ap.transpose(w)) + b - ratings, rated)
        cost = 0.5 * ap.sum(ap.square(err)) + 0.5 * (ap.sum(ap.square(x)) + ap.sum(ap.square(w)))
        grads = ap.gradients(cost, [x, w, b])
    feed = {ratings: y.astype(np.float32), rated: r.astype(np.float32),
            x: (0.1 * rng.standard_normal((movies, features))).astype(np.float32),
            w: (0.1 * rng.standard_normal((users, features))).astype(np.float32),
            b: np.zeros((1, users), np.float32)}
    # users are the batch (each device a slice of users, as data parallelism does)
    roles = {"Y": "batch_columns", "R": "batch_columns", "X": "weight", "W": "batch",
             "b": "batch_columns"}
    return g, [cost, *grads], feed, roles


def strategies(feed: dict[Any, np.ndarray], roles: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Input specs per baseline strategy, by input name."""
    def dp(role: str) -> Any:
        return {"batch": ("d", None), "batch_columns": (None, "d")}.get(role)

    def fsdp(role: str, shape: tuple[int, ...]) -> Any:
        return dp(role) if role != "weight" else (("d",) + (None,) * (len(shape) - 1))

    return {
        "replicated": {t.name: None for t in feed},
        "data_parallel": {t.name: dp(roles[t.name]) for t in feed},
        "fsdp": {t.name: fsdp(roles[t.name], t.shape) for t in feed},
    }


def measure(plan: Any, feed: dict[Any, np.ndarray], reference: list[Any] | None,
            repeats: int) -> tuple[dict[str, Any], list[Any]]:
    """Apply the plan's input shardings, compile, check values, time, read the HLO."""
    check = plan.measure(feed)
    g, outs = plan.graph, plan.outputs
    compiled = g.lower(outs, feed).compile()
    table = ap.collectives(compiled)
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    sharded_feed = {t: jax.device_put(v, plan.sharding(t)) for t, v in feed.items()}
    values = g.run(outs, sharded_feed)
    if reference is not None:
        for a, b in zip(values, reference):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-4)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(g.run(outs, sharded_feed))
        times.append(time.perf_counter() - start)
    return {"hlo_collective_bytes": table.total_bytes,
            "hlo_collectives": {k: v for k, v in table.by_kind().items()},
            "predicted_bytes": plan.cost.comm_bytes, "predicted_ok": check.ok,
            "model_memory_bytes": plan.cost.memory_bytes, "peak_memory_bytes": int(peak),
            "step_time_s": statistics.median(times),
            "inputs": {t.name: plan.spec(t) for t in feed}}, values


def run_model(name: str, model: Model, mesh: Any, repeats: int) -> dict[str, Any]:
    g, outs, feed, roles = model
    by_name = {t.name: t for t in feed}
    results: dict[str, Any] = {}
    reference = None
    replicated_memory = None
    for label, assignment in strategies(feed, roles).items():
        fixed = {by_name[n]: PartitionSpec(*(s or ())) for n, s in assignment.items()}
        plan = ap.plan_sharding(g, mesh, outputs=outs, fixed=fixed, scope="inputs")
        results[label], values = measure(plan, feed, reference, repeats)
        if label == "replicated":
            reference, replicated_memory = values, plan.cost.memory_bytes
    assert replicated_memory is not None
    budget = replicated_memory // 2
    plan = ap.plan_sharding(g, mesh, outputs=outs, memory_budget=budget)
    results["planner"], _ = measure(plan, feed, reference, repeats)
    results["planner"]["table"] = plan.table()
    for r in results.values():
        r["fits_budget"] = r["model_memory_bytes"] <= budget
    fitting = [r["hlo_collective_bytes"] for k, r in results.items()
               if k != "planner" and r["fits_budget"]]
    best = results["planner"]["hlo_collective_bytes"]
    print(f"\n{name}: budget {budget} bytes per device (half of replication's)")
    print(f"  {'strategy':<14}{'HLO bytes':>12}{'predicted':>12}{'memory':>12}{'peak':>12}"
          f"{'step ms':>10}  fits")
    for label, r in results.items():
        print(f"  {label:<14}{r['hlo_collective_bytes']:>12}{r['predicted_bytes']:>12}"
              f"{r['model_memory_bytes']:>12}{r['peak_memory_bytes']:>12}"
              f"{1e3 * r['step_time_s']:>10.2f}  {r['fits_budget']}")
    return {"budget_bytes": budget, "strategies": results,
            "planner_le_fitting_baselines": all(best <= b for b in fitting),
            "planner_predicted_ok": results["planner"]["predicted_ok"]}


def main(argv: list[str]) -> None:
    del argv
    quick = FLAGS.quick
    repeats = 1 if quick else FLAGS.repeats
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
    sizes = {"batch_heavy_mlp": (1024, 64, 64) if quick else (8192, 128, 128),
             "weight_heavy_mlp": (16, 256, 1024) if quick else (32, 1024, 4096)}
    cfg = {"quick": quick, "repeats": repeats, "mesh": dict(zip(mesh.axis_names,
                                                                 mesh.devices.shape)),
           "sizes": sizes, **_common.run_meta()}
    res: dict[str, Any] = {"config": cfg, "models": {}}
    for i, (name, dims) in enumerate(sizes.items()):
        res["models"][name] = run_model(name, mlp(*dims, seed=i), mesh, repeats)
    res["models"]["movielens_cf"] = run_model(
        "movielens_cf", collaborative_filtering(8 if quick else 16, quick), mesh, repeats)
    ok = all(m["planner_le_fitting_baselines"] for m in res["models"].values())
    print(f"\nplanner <= every baseline within the budget: {ok}")
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
