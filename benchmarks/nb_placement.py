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
# # Placement: overlap of two devices, and the cost of a partitioned call
#
# `with ap.device("cpu:1"):` pins the ops built inside to a device; `g.run` of a graph placed
# on several devices cuts it into one subprogram per device and stage, copies the values that
# cross devices, and dispatches the subprograms without waiting, so the devices compute at the
# same time (see `docs/placement.md`). This notebook measures both sides of that:
#
# 1. **Overlap.** y = sum(A(x)) + sum(B(x)), where A and B are independent chains of
#    (matmul, tanh) steps on a float32 matrix. Three variants of the same graph: A on cpu:0 and
#    B on cpu:1 (*two devices*), both on cpu:0 (*one device*), and no requests at all
#    (*unplaced*: one jitted program, as before placement existed).
# 2. **Per-call overhead.** A chain of four stages (sin(y)*2+1 each) on a short vector,
#    alternating cpu:0 and cpu:1: four subprograms and three transfers, against the same chain
#    on one device and unplaced. The overhead is the placed time minus the unplaced time.
#
# The graphs and the timing loops are those of the benchmark script `benchmarks/placement.py`
# (variants interleaved, their order rotated each repeat, medians reported). Before any timing,
# the notebook checks that every placed variant computes what the unplaced graph computes (to
# float32 rounding; the chain bit for bit). Host CPU "devices" share the machine's cores, so
# what two devices gain depends on the free cores; the ratios measured in the same run are the
# result, absolute times are not claims.

# %%
import os

# Host CPU devices, one compute thread each (as a device has its own compute), before JAX
# starts; a kernel or shell that set the device count already keeps its own flags.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               "device_count=8 --xla_cpu_multi_thread_eigen=false").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import placement as bench  # noqa: E402
from _notebook import SMALL, pick, save_figure, write_result  # noqa: E402

print(f"{jax.device_count()} devices: {[str(d) for d in jax.devices()[:4]]} ...")

# %% [markdown]
# ## Settings
#
# `ADPLUGIN_NOTEBOOK_SMALL=1` in the environment picks tiny sizes and few calls (the test
# suite runs this notebook that way, in seconds).

# %% tags=["parameters"]
SIZE = pick(384, 64)  # matrix size of the heavy branches
DEPTH = pick(6, 2)  # (matmul, tanh) steps per branch
BRANCH_CALLS = pick(5, 2)  # timed calls per variant and repeat (branches)
VECTOR = 16  # vector length of the overhead chain
CALLS = pick(300, 20)  # timed calls per variant and repeat (overhead)
REPEATS = pick(5, 2)  # interleaved repeats (medians reported)
RTOL = 1e-5  # placed branch sums against the unplaced one
cfg = {"size": SIZE, "depth": DEPTH, "branch_calls": BRANCH_CALLS, "small": VECTOR,
       "calls": CALLS, "repeats": REPEATS}
settings = {**cfg, "rtol": RTOL, "small": SMALL, "vector": VECTOR,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": os.cpu_count()}
print(settings)

# %% [markdown]
# ## The graphs, and how they are cut
#
# The two-device variant becomes two subprograms at stage 0 (one branch each, dispatched
# without waiting) and a small one adding the sums; the four-stage chain becomes four
# subprograms joined by three transfers.

# %%
g2, x2, w2, y2 = bench.branches("cpu:0", "cpu:1", SIZE, DEPTH)
branch_part = g2.placement(y2, {x2: None, w2: None}).partition()
print(branch_part)
g4, x4, y4 = bench.chain(["cpu:0", "cpu:1", "cpu:0", "cpu:1"], VECTOR)
chain_part = g4.placement(y4, {x4: None}).partition()
print(chain_part)
assert len(chain_part.subprograms) == 4 and len(chain_part.transfers) == 3

# %% [markdown]
# ## Placed results equal the unplaced ones
#
# Each variant's value must equal the unplaced graph's: the branch sums to float32 rounding
# (`RTOL`; XLA may fuse differently across a cut), the elementwise chain bit for bit. The
# notebook stops here, naming the variant, if one does not.

# %%
rng = np.random.default_rng(0)
xv = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
wv = (rng.standard_normal((SIZE, SIZE)) / np.sqrt(SIZE)).astype(np.float32)
BRANCH_VARIANTS = {"two_devices": ("cpu:0", "cpu:1"), "one_device": ("cpu:0", "cpu:0"),
                   "unplaced": (None, None)}
branch_values = {}
for name, (dev_a, dev_b) in BRANCH_VARIANTS.items():
    g, x, w, y = bench.branches(dev_a, dev_b, SIZE, DEPTH)
    branch_values[name] = float(g.run(y, {x: xv, w: wv}))
want = branch_values["unplaced"]
for name, v in branch_values.items():
    assert np.isclose(v, want, rtol=RTOL, atol=RTOL), f"branches {name}: {v} != unplaced {want}"

CHAIN_VARIANTS = {"four_subprograms": ["cpu:0", "cpu:1", "cpu:0", "cpu:1"],
                  "one_subprogram": ["cpu:0"] * 4, "unplaced": [None] * 4}
vec = np.linspace(-1, 1, VECTOR, dtype=np.float32)
chain_values = {}
for name, devices in CHAIN_VARIANTS.items():
    g, x, y = bench.chain(devices, VECTOR)
    chain_values[name] = np.asarray(g.run(y, {x: vec}))
for name, v in chain_values.items():
    assert np.array_equal(v.view(np.uint32), chain_values["unplaced"].view(np.uint32)), (
        f"chain {name}: not bit-equal to the unplaced run")

check = {"ok": True, "rtol": RTOL, "branch_values": branch_values,
         "branches_max_rel_diff": max(abs(v - want) / abs(want) for v in branch_values.values()),
         "chain_bit_equal": True}
print(f"placed values agree with the unplaced run: branches within "
      f"{check['branches_max_rel_diff']:.2e} relative, the chain bit for bit")

# %% [markdown]
# ## Overlap: two branches on two devices, on one device, unplaced

# %%
branches = bench.parallel_branches(cfg)
for name, t in branches["median_s"].items():
    print(f"{name:12} {t * 1e3:9.2f} ms (median of {REPEATS})")
print(f"two devices / one device: {branches['ratio_two_over_one_device']:.3f} (goal "
      f"<= {bench.GOAL_PARALLEL_RATIO} with two free cores; {os.cpu_count()} here); "
      f"two devices / unplaced: {branches['ratio_two_devices_over_unplaced']:.3f}")

# %% [markdown]
# ## Per-call overhead of a four-subprogram run

# %%
overhead = bench.call_overhead(cfg)
for name, t in overhead["median_us"].items():
    print(f"{name:17} {t:9.1f} us per call")
print(f"overhead of 4 subprograms and 3 transfers over the unplaced run: "
      f"{overhead['overhead_us']:.1f} us per call (goal < {bench.GOAL_OVERHEAD_US:g} us)")
load = max((v for v in (branches["foreign_load_max"], overhead["foreign_load_max"])
            if v is not None), default=None)
if load is not None and load > bench.DISTURBED_LOAD:
    print(f"note: other processes kept up to {load:.2f} CPU cores busy meanwhile; the timings "
          "are disturbed")

# %% [markdown]
# ## Figure

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
names = list(BRANCH_VARIANTS)
left.bar(names, [branches["median_s"][k] * 1e3 for k in names],
         color=["tab:green", "tab:blue", "tab:gray"])
for i, k in enumerate(names):
    left.plot([i] * len(branches["runs_s"][k]), [t * 1e3 for t in branches["runs_s"][k]], "k.")
left.set_ylabel("ms per call (bars: median; dots: repeats)")
left.set_title(f"Two {DEPTH}-step branches on float32[{SIZE}, {SIZE}]\n"
               f"two devices / one device = {branches['ratio_two_over_one_device']:.2f}")
left.grid(True, axis="y", alpha=0.3)
names = list(CHAIN_VARIANTS)
right.bar(names, [overhead["median_us"][k] for k in names],
          color=["tab:green", "tab:blue", "tab:gray"])
for i, k in enumerate(names):
    right.plot([i] * len(overhead["runs_us"][k]), overhead["runs_us"][k], "k.")
right.set_ylabel("us per call (bars: median; dots: repeats)")
right.set_title(f"Four-stage chain on float32[{VECTOR}]\n"
                f"overhead of 4 subprograms: {overhead['overhead_us']:.0f} us per call")
right.grid(True, axis="y", alpha=0.3)
save_figure(fig, "nb_placement")

# %% [markdown]
# ## Result
#
# Written to `benchmarks/results/nb_placement.json` (or `$ADPLUGIN_NOTEBOOK_OUT`), with the
# commit measured, the settings (XLA flags included), the value check, every timing, and the
# partitions.

# %%
ratios = {"two_over_one_device": branches["ratio_two_over_one_device"],
          "two_devices_over_unplaced": branches["ratio_two_devices_over_unplaced"]}
partitions = {"branches": [str(s) for s in branch_part.subprograms],
              "chain": {"subprograms": len(chain_part.subprograms),
                        "transfers": [str(t) for t in chain_part.transfers]}}
path = write_result("nb_placement", settings, check=check, branches=branches, overhead=overhead,
                    ratios=ratios, overhead_us=overhead["overhead_us"], partitions=partitions,
                    goals={"two_over_one_device_at_most": bench.GOAL_PARALLEL_RATIO,
                           "overhead_us_under": bench.GOAL_OVERHEAD_US})
