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
# # Tape training against `jax.jit`: per-step time and loss curves
#
# The collaborative-filtering loop of the MovieLens course lab, on the shipped practice set
# (ratings of movies by users, mean-normalized; Adam, learning rate 0.1;
# J = ½ Σ R·(X Wᵀ + b − Y)² + λ/2 (Σ X² + Σ W²); the same random initialization for every
# variant), trained with:
#
# - **`ap` (tape)**: `ap.GradientTape` + `ap.optimizers.Adam`, eager, TensorFlow style;
# - **`ap_function`**: the same step under `@ap.function` (tape, gradient and Adam update
#   compiled into one program);
# - **`jax` (the peer)**: `jax.jit(jax.value_and_grad(cost))` + `optax.adam`, with a jitted
#   update: the loop one writes by hand in JAX;
# - **`torch`**: PyTorch autograd + `torch.optim.Adam`, only when `import torch` works
#   (otherwise skipped with the reason printed).
#
# The training functions are those of the benchmark script `benchmarks/tape_training.py`,
# unchanged; here the loop that times them also keeps each step's loss, so the loss curves
# can be compared step by step. Every step ends with a sync. The variants run in this one
# process, interleaved, the order rotated per repeat. Reported: the **steady per-step time**
# (median of the steps after the first few) as a **ratio against `jax` in the same run**, and
# the time of every step (the first ones include tracing and compiling). Absolute times depend
# on the machine and are not claims. First-step and total times of fresh processes, where no
# variant can reuse another's compiled programs, are what the script measures.
#
# The loss curves must agree: every step's loss of each variant within `LOSS_RTOL` of the
# `jax` loss, or the notebook stops with an error.

# %%
import statistics

import matplotlib.pyplot as plt
import numpy as np
import tape_training as bench
from _common import DEFAULT_RATINGS
from _notebook import SMALL, pick, save_figure, write_result

# %% [markdown]
# ## Settings
#
# `ADPLUGIN_NOTEBOOK_SMALL=1` in the environment picks a slice of the data and a few steps
# (the test suite runs this notebook that way, in seconds).

# %% tags=["parameters"]
STEPS = pick(200, 12)  # Adam steps per training run
FEATURES = pick(100, 8)  # collaborative-filtering features
MOVIES = pick(0, 200)  # the first this many movies (0: all 4778)
REPEATS = pick(3, 1)  # training runs per variant (medians reported)
SKIP_STEPS = pick(10, 3)  # steps left out of the steady per-step time
LOSS_RTOL = 1e-3  # every step's loss against the jax loss
cfg = {"data": str(DEFAULT_RATINGS), "steps": STEPS, "features": FEATURES, "movies": MOVIES,
       "lam": 1.0, "learning_rate": 0.1, "seed": 1234, "epsilon": bench.EPS}
settings = {**cfg, "data": DEFAULT_RATINGS.name, "repeats": REPEATS, "skip_steps": SKIP_STEPS,
            "loss_rtol": LOSS_RTOL, "small": SMALL}
print(settings)

# %% [markdown]
# ## The problem, and the variants this machine can run

# %%
problem = bench.load_problem(cfg)
n_movies, n_users = problem["Y"].shape
settings.update(n_movies=n_movies, n_users=n_users)
variants = ["ap", "ap_function", "jax"]
skipped = {}
torch_missing = bench.available("torch")
if torch_missing is None:
    variants.append("torch")
else:
    skipped["torch"] = torch_missing
    print(f"PyTorch skipped: {torch_missing}")
print(f"{n_movies} movies x {n_users} users, {int(problem['R'].sum())} ratings; "
      f"variants: {', '.join(variants)}")

# %% [markdown]
# ## Training
#
# `recording(train)` runs one of the script's training functions with a timing loop that also
# keeps every step's loss (one list append per step; the float conversion happens after the
# loop).

# %%
_timed_loop = bench.timed_loop


def _recording_loop(step, steps, after=None):
    losses = []

    def recorded():
        loss = step()
        losses.append(loss)
        return loss

    out = _timed_loop(recorded, steps, after)
    out["losses"] = [float(v) for v in losses]
    return out


def recording(train, problem, cfg):
    bench.timed_loop = _recording_loop
    try:
        return train(problem, cfg)
    finally:
        bench.timed_loop = _timed_loop


runs = {v: [] for v in variants}
for r in range(REPEATS):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
        runs[v].append(recording(bench.TRAINERS[v], problem, cfg))
    print(f"repeat {r + 1}/{REPEATS} done (order: {', '.join(order)})")

# %% [markdown]
# ## The loss curves agree
#
# Each variant's loss at every step, relative to the `jax` loss at the same step.

# %%
reference = np.array(runs["jax"][0]["losses"])
agreement = {}
for v in variants:
    worst = max(float(np.max(np.abs(np.array(run["losses"]) - reference) / np.abs(reference)))
                for run in runs[v])
    agreement[v] = worst
    print(f"{v:12} worst relative loss difference to jax over {STEPS} steps: {worst:.2e}")
check = {"loss_rtol": LOSS_RTOL, "max_rel_diff_vs_jax": agreement,
         "first_loss": reference[0], "final_loss": reference[-1],
         "ok": all(d <= LOSS_RTOL for d in agreement.values())}
assert check["ok"], f"loss curves disagree with jax beyond {LOSS_RTOL}: {agreement}"
assert reference[-1] < reference[0], "training did not lower the loss"

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
steps = np.arange(1, STEPS + 1)
styles = {"ap": "-", "ap_function": "--", "jax": ":", "torch": "-."}
for v in variants:
    left.semilogy(steps, runs[v][0]["losses"], styles[v], label=bench.VARIANTS[v], lw=2)
    if v != "jax":
        diff = np.abs(np.array(runs[v][0]["losses"]) - reference) / np.abs(reference)
        right.semilogy(steps, np.maximum(diff, 1e-9), label=v)
right.axhline(LOSS_RTOL, color="gray", lw=1, ls="--", label="tolerance")
left.set_xlabel("step")
left.set_ylabel("cost J")
left.set_title("Loss curves (first repeat)")
left.legend(fontsize=8)
right.set_xlabel("step")
right.set_ylabel("|J - J_jax| / J_jax (floor 1e-9)")
right.set_title("Relative difference to the jax loop")
right.legend(fontsize=8)
for ax in (left, right):
    ax.grid(True, which="both", alpha=0.3)
save_figure(fig, "nb_tape_training_loss")

# %% [markdown]
# ## Per-step time
#
# Left: the time of every step of the first repeat (the first steps trace and compile; the
# tape runs its first steps interpreted while it compiles in the background). Right: the steady
# per-step time of each variant over that of `jax`, measured in this run (below 1: faster).

# %%
summary = {}
for v in variants:
    steady = [statistics.median(run["step_s"][SKIP_STEPS:]) for run in runs[v]]
    summary[v] = {"name": bench.VARIANTS[v],
                  "steady_step_s": statistics.median(steady),
                  "first_step_s": statistics.median(run["step_s"][0] for run in runs[v]),
                  "total_s": statistics.median(run["total_s"] for run in runs[v]),
                  "final_losses": [run["final_loss"] for run in runs[v]],
                  "step_ms": [[round(t * 1e3, 4) for t in run["step_s"]] for run in runs[v]],
                  "losses": runs[v][0]["losses"]}
    if "first_compiled_step" in runs[v][0]:
        summary[v]["first_compiled_step"] = [run["first_compiled_step"] for run in runs[v]]
for v, reason in skipped.items():
    summary[v] = {"name": bench.VARIANTS[v], "skipped": reason}
jax_steady = summary["jax"]["steady_step_s"]
ratios = {f"{v}_over_jax_steady": summary[v]["steady_step_s"] / jax_steady
          for v in variants if v != "jax"}
for v in variants:
    print(f"{v:12} steady step {summary[v]['steady_step_s'] * 1e3:8.3f} ms  "
          f"first step {summary[v]['first_step_s'] * 1e3:8.1f} ms  "
          f"ratio to jax {summary[v]['steady_step_s'] / jax_steady:6.3f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for v in variants:
    left.semilogy(steps, np.array(runs[v][0]["step_s"]) * 1e3, label=v, alpha=0.8)
left.axvline(SKIP_STEPS + 0.5, color="gray", lw=1, ls=":")
left.set_xlabel("step")
left.set_ylabel("ms per step")
left.set_title("Time of every step (first repeat)")
left.legend(fontsize=8)
left.grid(True, which="both", alpha=0.3)
names = [v for v in variants if v != "jax"]
right.bar(names, [ratios[f"{v}_over_jax_steady"] for v in names])
right.axhline(1.0, color="gray", lw=1, ls="--")
right.set_ylabel("steady step time / jax's")
right.set_title("Per-step time against jax.jit + optax, same run")
right.grid(True, axis="y", alpha=0.3)
save_figure(fig, "nb_tape_training_time")

# %% [markdown]
# ## Result
#
# Written to `benchmarks/results/nb_tape_training.json` (or `$ADPLUGIN_NOTEBOOK_OUT`), with the
# commit measured, the settings, the loss check, per-variant step times and loss curves, and
# the ratios.

# %%
path = write_result("nb_tape_training", settings, check=check, variants=summary, ratios=ratios,
                    peers={"jax": bench.VARIANTS["jax"], "torch": skipped.get("torch") or
                           bench.VARIANTS["torch"]})
