# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.16.4
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sharding: three training steps, four strategies, and the planner
#
# Three training steps (loss and weight gradients, as graphs) on a 1-D mesh `("d",)` of 8
# host devices:
#
# - a **batch-heavy MLP** (many examples, small weights: data parallelism should win);
# - a **weight-heavy MLP** (few examples, large weights: Megatron's column-then-row sharding
#   should win);
# - the **MovieLens collaborative-filtering step** (movies x users ratings Y and R, movie
#   features X, user weights W and bias b; the users are the batch).
#
# Each runs under four strategies of input shardings:
#
# - **replicated**: every input whole on every device (moves nothing; needs the most memory);
# - **data_parallel**: the batch split, the weights whole;
# - **fsdp**: the batch and every weight's first dimension split, XLA's propagation deciding the
#   rest;
# - **planner**: `ap.plan_sharding` under a memory budget of half of what replication needs.
#
# Per strategy: the collective bytes per step in the compiled HLO (`ap.collectives`), the bytes
# the model predicts, the memory per device the model counts and the peak that XLA's
# `memory_analysis` reports, and the step time. The models and the strategies are those of the
# benchmark script `benchmarks/sharding.py`; before anything is reported, every strategy's
# loss and gradients are checked against the replicated run. Host CPU "devices" share the
# machine's cores: the bytes are the result, the step times only say how the strategies compare
# in the same run.

# %%
import os

# 8 host CPU devices, before JAX starts; a kernel or shell that set the device count already
# keeps its own flags.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sharding as bench  # noqa: E402
from _notebook import SMALL, pick, save_figure, write_result  # noqa: E402
from jax.sharding import AxisType, PartitionSpec  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

import adplugin as ap  # noqa: E402

# The script reads the ratings' path from its command-line flags; here they keep their defaults
# (the shipped MovieLens practice set).
bench.FLAGS.mark_as_parsed()

mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
print(f"{jax.device_count()} devices; mesh {dict(zip(mesh.axis_names, mesh.devices.shape))}")

# %% [markdown]
# ## Settings
#
# `ADPLUGIN_NOTEBOOK_SMALL=1` in the environment picks small models (those of the script's
# `--quick`) and few timed runs (the test suite runs this notebook that way, in seconds).

# %% tags=["parameters"]
MLP_SIZES = {"batch_heavy_mlp": pick((8192, 128, 128), (1024, 64, 64)),  # batch, width, hidden
             "weight_heavy_mlp": pick((32, 1024, 4096), (16, 256, 1024))}
FEATURES = pick(16, 8)  # collaborative-filtering features (small: 512 movies x 64 users)
CALLS = pick(5, 2)  # steps per timed run
REPEATS = pick(7, 3)  # timed runs per strategy, interleaved (medians reported)
RTOL, ATOL = 2e-3, 1e-4  # every strategy's loss and gradients against the replicated run
STRATEGIES = ["replicated", "data_parallel", "fsdp", "planner"]
settings = {"mlp_sizes": MLP_SIZES, "features": FEATURES, "calls": CALLS, "repeats": REPEATS,
            "rtol": RTOL, "atol": ATOL, "strategies": STRATEGIES, "small": SMALL,
            "mesh": dict(zip(mesh.axis_names, mesh.devices.shape)),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": os.cpu_count()}
print(settings)

# %% [markdown]
# ## The plans
#
# The baselines are plans too: `ap.plan_sharding` with every input `fixed` to the strategy's
# spec, so that each comes with its predicted collectives and memory. The budget of a model is
# half of the memory per device its replicated plan needs. A plan annotates the placeholders of
# its graph (`plan.apply()`), so each strategy gets its own copy of the step, built with the
# same seed: the same input values.

# %%
BUILD = {
    "batch_heavy_mlp": lambda: bench.mlp(*MLP_SIZES["batch_heavy_mlp"], seed=0),
    "weight_heavy_mlp": lambda: bench.mlp(*MLP_SIZES["weight_heavy_mlp"], seed=1),
    "movielens_cf": lambda: bench.collaborative_filtering(FEATURES, quick=SMALL),
}
steps: dict[str, dict[str, dict]] = {}
budgets: dict[str, int] = {}
for model, build in BUILD.items():
    steps[model] = {}
    for label in STRATEGIES:
        g, outs, feed, roles = build()
        if label == "planner":
            plan = ap.plan_sharding(g, mesh, outputs=outs, memory_budget=budgets[model])
        else:
            by_name = {t.name: t for t in feed}
            fixed = {by_name[n]: PartitionSpec(*(s or ()))
                     for n, s in bench.strategies(feed, roles)[label].items()}
            plan = ap.plan_sharding(g, mesh, outputs=outs, fixed=fixed, scope="inputs")
            if label == "replicated":
                budgets[model] = plan.cost.memory_bytes // 2
        plan.apply()
        steps[model][label] = {"plan": plan, "feed": feed}
    shapes = {t.name: t.shape for t in steps[model]["replicated"]["feed"]}
    print(f"\n{model}: inputs {shapes}; budget {budgets[model]} bytes per device")
    for label, s in steps[model].items():
        specs = {t.name: spec for t, spec in s["plan"].inputs.items()}
        print(f"  {label:<14}{specs}")

# %% [markdown]
# ## Every strategy computes what replication computes
#
# Loss and gradients of each strategy, from inputs placed as its plan says, against the
# replicated run's (`RTOL`, `ATOL`: the sums are split and reduced in another order). The
# notebook stops here, naming the model, the strategy and the output, if one does not agree.

# %%
def sharded_feed(plan, feed):
    return {t: jax.device_put(v, plan.sharding(t)) for t, v in feed.items()}


values: dict[str, dict[str, list[np.ndarray]]] = {}
max_rel_diff: dict[str, dict[str, float]] = {}
for model, by_label in steps.items():
    values[model], max_rel_diff[model] = {}, {}
    for label, s in by_label.items():
        plan = s["plan"]
        out = plan.graph.run(plan.outputs, sharded_feed(plan, s["feed"]))
        values[model][label] = [np.asarray(v) for v in out]
    want = values[model]["replicated"]
    for label, got in values[model].items():
        for i, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{model} {label}: output {i} != replicated")
        max_rel_diff[model][label] = max(
            float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
            for a, b in zip(got, want))
check = {"ok": True, "rtol": RTOL, "atol": ATOL, "max_rel_diff": max_rel_diff}
worst = max(v for m in max_rel_diff.values() for v in m.values())
print(f"every strategy's loss and gradients agree with the replicated run (largest difference "
      f"{worst:.2e} of the output's largest magnitude)")

# %% [markdown]
# ## Collectives, memory and step time
#
# `plan.measure(feed)` compiles the step and matches the predicted collectives against the HLO
# (`predicted_ok`: every collective predicted, with its bytes); `ap.collectives` of the
# compiled step gives the bytes moved per device; `memory_analysis` the peak per device
# (arguments + outputs + temporaries). *memory* is the model's count (inputs' shards plus
# every computed node's shard), the one the budget applies to. Where a primitive's sharding rule
# refuses the specs a baseline gives its operands (`conflicts`), XLA reshards there with
# collectives the model does not predict (`predicted_ok` False); the planner skips such
# assignments, so its prediction must be exact. The timed runs of a model's
# strategies are interleaved, their order rotated each repeat: a step time is the median of
# `REPEATS` runs of `CALLS` steps each.

# %%
def time_strategies(by_label):
    feeds = {k: sharded_feed(s["plan"], s["feed"]) for k, s in by_label.items()}
    labels = list(by_label)
    runs: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(REPEATS):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            plan = by_label[label]["plan"]
            start = time.perf_counter()
            for _ in range(CALLS):
                jax.block_until_ready(plan.graph.run(plan.outputs, feeds[label]))
            runs[label].append((time.perf_counter() - start) / CALLS)
    return runs


results: dict[str, dict] = {}
for model, by_label in steps.items():
    rows = {}
    for label, s in by_label.items():
        plan, feed = s["plan"], s["feed"]
        measured = plan.measure(feed)
        compiled = plan.graph.lower(plan.outputs, feed).compile()
        table = ap.collectives(compiled)
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
        rows[label] = {
            "hlo_collective_bytes": table.total_bytes,
            "hlo_collectives": {k: {"count": len(v), "bytes": v.total_bytes}
                                for k, v in table.by_kind().items()},
            "predicted_bytes": plan.cost.comm_bytes, "predicted_ok": measured.ok,
            "conflicts": plan.cost.conflicts,
            "model_memory_bytes": plan.cost.memory_bytes, "peak_memory_bytes": int(peak),
            "fits_budget": plan.cost.memory_bytes <= budgets[model],
            "inputs": {t.name: spec for t, spec in plan.inputs.items()}}
    runs = time_strategies(by_label)
    for label, row in rows.items():
        row.update(runs_s=runs[label], step_time_s=statistics.median(runs[label]))
    shapes = {t.name: t.shape for t in by_label["replicated"]["feed"]}
    results[model] = {"shapes": shapes, "budget_bytes": budgets[model], "strategies": rows}
    print(f"\n{model}: budget {budgets[model]} bytes per device (half of replication's)")
    print(f"  {'strategy':<14}{'HLO bytes':>12}{'predicted':>12}{'memory':>12}{'peak':>12}"
          f"{'step ms':>10}  predicted ok  fits budget")
    for label, r in rows.items():
        print(f"  {label:<14}{r['hlo_collective_bytes']:>12}{r['predicted_bytes']:>12}"
              f"{r['model_memory_bytes']:>12}{r['peak_memory_bytes']:>12}"
              f"{1e3 * r['step_time_s']:>10.2f}  {str(r['predicted_ok']):<12}  "
              f"{'yes' if r['fits_budget'] else 'no'}")

# %% [markdown]
# ## Figure
#
# Bars per model and strategy; a hatched bar is a strategy whose memory per device exceeds the
# budget. Replication moves nothing: its bar is marked 0 on the log scale.

# %%
COLORS = {"replicated": "tab:gray", "data_parallel": "tab:blue", "fsdp": "tab:orange",
          "planner": "tab:green"}


def human(n):
    return "0" if n == 0 else next(f"{n / u:.{1 if n < 10 * u else 0}f}{s}" for u, s in
                                   ((2**20, "M"), (2**10, "K"), (1, "")) if n >= u)


models = list(results)
width = 0.8 / len(STRATEGIES)
fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
nonzero = [r["hlo_collective_bytes"] for m in results.values()
           for r in m["strategies"].values() if r["hlo_collective_bytes"] > 0]
floor = min(nonzero) / 4
for j, label in enumerate(STRATEGIES):
    xs = np.arange(len(models)) + (j - (len(STRATEGIES) - 1) / 2) * width
    rows = [results[m]["strategies"][label] for m in models]
    nbytes = [r["hlo_collective_bytes"] for r in rows]
    ms = [1e3 * r["step_time_s"] for r in rows]
    for ax, heights, text in ((left, nbytes, [human(b) for b in nbytes]),
                              (right, ms, [f"{t:.3g}" for t in ms])):
        bars = ax.bar(xs, heights, width, color=COLORS[label], edgecolor="black", linewidth=0.5)
        for bar, r, h, t in zip(bars, rows, heights, text):
            bar.set_hatch("" if r["fits_budget"] else "//")
            ax.annotate(t, (bar.get_x() + width / 2, max(h, floor if ax is left else h)),
                        ha="center", va="bottom", fontsize=7)
handles = [Patch(facecolor=c, edgecolor="black", label=k) for k, c in COLORS.items()]
handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="over the budget"))
for ax, title, ylabel in (
        (left, "HLO collective bytes per step and device", "bytes (log scale)"),
        (right, f"Step time (median of {REPEATS} runs of {CALLS} steps)", "ms (log scale)")):
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
right.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
right.yaxis.set_minor_formatter(NullFormatter())
left.set_ylim(floor, 4 * max(nonzero))
times = [1e3 * r["step_time_s"] for m in results.values() for r in m["strategies"].values()]
right.set_ylim(min(times) / 2, 2 * max(times))
left.legend(handles=handles, fontsize=8, loc="upper left")
save_figure(fig, "nb_sharding")

# %% [markdown]
# ## The planner's plan for the weight-heavy MLP
#
# Under the budget, replication is out, and splitting the batch (16 or 32 examples) saves
# little: the planner should find Megatron's sharding, W0 split by columns and W1 by rows, so
# that the only collective is the all-reduce of the second matmul's output (batch x width
# floats) and each device keeps its slice of the weight gradients.

# %%
megatron_plan = steps["weight_heavy_mlp"]["planner"]["plan"]
print(megatron_plan.table())
chosen = {t.name: spec for t, spec in megatron_plan.inputs.items()}
assert chosen["w0"] == (None, "d") and chosen["w1"] == ("d", None), (
    f"the planner did not choose Megatron's sharding: {chosen}")
batch, width_in, _ = MLP_SIZES["weight_heavy_mlp"]
print(f"Megatron: {chosen}; {megatron_plan.cost.comm_bytes} bytes per step = one all-reduce of "
      f"float32[{batch}, {width_in}]")

# %% [markdown]
# ## Result
#
# The planner must fit the budget, move no more bytes in the HLO than every baseline that fits
# it, and predict exactly the bytes the HLO moves. Written to
# `benchmarks/results/nb_sharding.json` (or `$ADPLUGIN_NOTEBOOK_OUT`), with the commit
# measured, the settings, the value check, and every strategy's figures and input specs.

# %%
for model, res in results.items():
    rows = res["strategies"]
    planner = rows["planner"]
    fitting = {k: r["hlo_collective_bytes"] for k, r in rows.items()
               if k != "planner" and r["fits_budget"]}
    assert planner["fits_budget"], f"{model}: the planner's plan exceeds the budget"
    assert all(planner["hlo_collective_bytes"] <= b for b in fitting.values()), (
        f"{model}: the planner moves {planner['hlo_collective_bytes']} bytes, more than a "
        f"baseline within the budget: {fitting}")
    assert planner["predicted_ok"] and \
        planner["predicted_bytes"] == planner["hlo_collective_bytes"], (
            f"{model}: predicted {planner['predicted_bytes']} bytes, the HLO moves "
            f"{planner['hlo_collective_bytes']}")
    res.update(planner_le_fitting_baselines=True, planner_predicted_equals_measured=True,
               fitting_baselines=sorted(fitting))
    print(f"{model}: planner {planner['hlo_collective_bytes']} bytes (predicted "
          f"{planner['predicted_bytes']}) <= {fitting or 'no baseline within the budget'}")

path = write_result("nb_sharding", settings, check=check, models=results,
                    megatron={"inputs": chosen, "table": megatron_plan.table()})
