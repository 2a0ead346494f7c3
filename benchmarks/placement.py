"""Placement: two heavy branches on two devices against one device, and the cost of a
partitioned call, measured in one run on host CPU devices.

1. Parallel branches. y = sum(A(x)) + sum(B(x)), where A and B are independent chains of
   --depth (matmul, tanh) steps on float32[--size, --size]. Three variants of the same graph:
   (a) A pinned to cpu:0 and B to cpu:1 (two subprograms dispatched without waiting, then a
   small one adding the sums); (b) both branches pinned to cpu:0 (one subprogram); (c) no
   requests at all (one jitted program, as before placement existed). Reported: (a)/(b),
   the goal is <= 0.75 where the machine has the cores, and (a)/(c).

   Host CPU "devices" share the machine's cores, and XLA's CPU runtime parallelizes one
   program's matmuls (Eigen threads) and independent ops by itself, so on CPU the one-device
   program is already parallel. By default each device computes on one thread
   (--xla_cpu_multi_thread_eigen=false, as a device has its own compute); --threaded_devices
   keeps XLA's defaults. The flags in use are recorded.

2. Per-call overhead. A chain of four stages (sin(y)*2+1 each) on float32[--small],
   alternating cpu:0 and cpu:1: four subprograms and three transfers, against the same graph
   unplaced (one program). Overhead per call = placed - unplaced (goal < 200 us), from the
   median over interleaved repeats of the mean time of --calls calls each (synced at the end).

Every variant's result is checked against the unplaced run (the branch sums within rtol 1e-5,
the chain bit for bit) before anything is reported. Each repeat rotates the order of the
variants; the CPU time other processes used meanwhile is recorded and warned about.

    python benchmarks/placement.py [--repeats 5] [--quick] [--out FILE]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    extra = "" if "--threaded_devices" in sys.argv else " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8" + extra).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the XLA flags)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import adplugin as ap  # noqa: E402

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 384, "matrix size of the heavy branches")
flags.DEFINE_integer("depth", 6, "(matmul, tanh) steps per branch")
flags.DEFINE_integer("branch_calls", 5, "timed calls per variant and repeat (branches)")
flags.DEFINE_integer("small", 16, "vector length of the overhead chain")
flags.DEFINE_integer("calls", 300, "timed calls per variant and repeat (overhead)")
flags.DEFINE_integer("repeats", 5, "interleaved repeats (medians reported)")
flags.DEFINE_bool("threaded_devices", False, "keep XLA's multithreaded CPU kernels")
flags.DEFINE_bool("quick", False, "small sizes, few repeats (for the smoke test)")
flags.DEFINE_string("out", str(HERE / "results/placement.json"), "JSON output file")

QUICK = {"size": 64, "depth": 2, "branch_calls": 2, "calls": 20, "repeats": 2}
GOAL_PARALLEL_RATIO = 0.75
GOAL_OVERHEAD_US = 200.0
DISTURBED_LOAD = 0.25  # CPU cores other processes kept busy, above which the report warns


def machine_busy_s() -> float | None:
    """CPU seconds all processes of the machine have used so far (Linux; else None)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


# --- the graphs -------------------------------------------------------------------------------

def branches(dev_a: str | None, dev_b: str | None, size: int, depth: int) -> tuple[Any, ...]:
    """y = sum(A(x)) + sum(B(x)) with A on dev_a and B on dev_b (None: no request)."""
    with ap.Graph() as g:
        x = ap.placeholder((size, size), name="x")
        w = ap.placeholder((size, size), name="w")
        sums = []
        for dev, scale in ((dev_a, 1.0), (dev_b, -1.0)):
            with ap.device(dev):
                h = x * scale
                for _ in range(depth):
                    h = ap.tanh(ap.matmul(h, w))
                sums.append(ap.sum(h))
        y = sums[0] + sums[1]
    return g, x, w, y


def chain(devices: list[str | None], small: int) -> tuple[Any, ...]:
    with ap.Graph() as g:
        x = ap.placeholder((small,), name="x")
        y = x
        for d in devices:
            with ap.device(d):
                y = ap.sin(y) * 2.0 + 1.0
    return g, x, y


# --- timing -----------------------------------------------------------------------------------

def timed(call: Callable[[], Any], n: int) -> float:
    """Mean seconds per call of n calls, synced once at the end (dispatch overlaps)."""
    out = None
    start = time.perf_counter()
    for _ in range(n):
        out = call()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def interleaved(variants: dict[str, Callable[[], Any]], n: int, repeats: int
                ) -> tuple[dict[str, list[float]], float | None]:
    """Per variant, one timing per repeat (order rotated each repeat); and the largest load
    (CPU cores) other processes put on the machine during a repeat."""
    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    worst: float | None = None
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        busy, own, wall = machine_busy_s(), time.process_time(), time.perf_counter()
        for k in order:
            times[k].append(timed(variants[k], n))
        wall, own = time.perf_counter() - wall, time.process_time() - own
        after = machine_busy_s()
        if busy is not None and after is not None:
            load = max(0.0, after - busy - own) / wall
            worst = load if worst is None else max(worst, load)
    return times, worst


def parallel_branches(cfg: dict[str, Any]) -> dict[str, Any]:
    size, depth = cfg["size"], cfg["depth"]
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((size, size)).astype(np.float32)
    wv = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    graphs = {"two_devices": branches("cpu:0", "cpu:1", size, depth),
              "one_device": branches("cpu:0", "cpu:0", size, depth),
              "unplaced": branches(None, None, size, depth)}
    # the fed values already on cpu:0, as a training loop's would be: the variants differ
    # only in where the branches run
    x0, w0 = jax.device_put(xv, jax.devices()[0]), jax.device_put(wv, jax.devices()[0])
    calls = {k: (lambda g=g, x=x, w=w, y=y: g.run(y, {x: x0, w: w0}))
             for k, (g, x, w, y) in graphs.items()}
    results = {k: float(c()) for k, c in calls.items()}  # compiles, and the check
    for k, v in results.items():
        if not np.isclose(v, results["unplaced"], rtol=1e-5, atol=1e-5):
            raise SystemExit(f"{k} computed {v}, the unplaced run {results['unplaced']}: "
                             "no timing reported")
    g2, x2, w2, y2 = graphs["two_devices"]
    part = g2.placement(y2, {x2: None, w2: None}).partition()
    times, load = interleaved(calls, cfg["branch_calls"], cfg["repeats"])
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the least disturbed repeat of each
    return {"median_s": med, "best_s": best, "runs_s": times, "results": results,
            "ratio_two_over_one_device_best": best["two_devices"] / best["one_device"],
            "ratio_two_over_one_device": med["two_devices"] / med["one_device"],
            "ratio_two_devices_over_unplaced": med["two_devices"] / med["unplaced"],
            "paired_ratios": [a / b for a, b in zip(times["two_devices"],
                                                    times["one_device"])],
            "subprograms": [str(s) for s in part.subprograms],
            "foreign_load_max": load}


def call_overhead(cfg: dict[str, Any]) -> dict[str, Any]:
    small = cfg["small"]
    xv = np.linspace(-1, 1, small, dtype=np.float32)
    graphs = {"four_subprograms": chain(["cpu:0", "cpu:1", "cpu:0", "cpu:1"], small),
              "one_subprogram": chain(["cpu:0"] * 4, small),
              "unplaced": chain([None] * 4, small)}
    calls = {k: (lambda g=g, x=x, y=y: g.run(y, {x: xv})) for k, (g, x, y) in graphs.items()}
    want = np.asarray(calls["unplaced"]())
    for k, c in calls.items():
        got = np.asarray(c())
        if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            raise SystemExit(f"{k} differs from the unplaced run: no timing reported")
    g4, x4, y4 = graphs["four_subprograms"]
    part = g4.placement(y4, {x4: None}).partition()
    assert len(part.subprograms) == 4 and len(part.transfers) == 3, str(part)
    for c in calls.values():  # warm: every executable compiled, jit caches filled
        for _ in range(20):
            c()
    times, load = interleaved(calls, cfg["calls"], cfg["repeats"])
    med_us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    best_us = {k: min(v) * 1e6 for k, v in times.items()}
    return {"median_us": med_us, "best_us": best_us,
            "runs_us": {k: [t * 1e6 for t in v] for k, v in times.items()},
            "overhead_us": med_us["four_subprograms"] - med_us["unplaced"],
            "overhead_best_us": best_us["four_subprograms"] - best_us["unplaced"],
            "overhead_one_subprogram_us": med_us["one_subprogram"] - med_us["unplaced"],
            "subprograms": len(part.subprograms), "transfers": len(part.transfers),
            "foreign_load_max": load}


# --- report -----------------------------------------------------------------------------------

def goals(res: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    rows = [
        (f"two branches on two devices / on one device <= {GOAL_PARALLEL_RATIO} "
         f"(needs 2 free cores; {cores} here)",
         res["branches"]["ratio_two_over_one_device"], GOAL_PARALLEL_RATIO),
        (f"per-call overhead, 4 subprograms over the unplaced run < {GOAL_OVERHEAD_US:g} us",
         res["overhead"]["overhead_us"], GOAL_OVERHEAD_US),
    ]
    return [{"goal": g, "value": v, "target": t,
             "passed": None if cfg["quick"] else bool(v <= t)} for g, v, t in rows]


def print_report(res: dict[str, Any]) -> None:
    c, b, o = res["config"], res["branches"], res["overhead"]
    print(f"\nparallel branches: {c['depth']} x (matmul, tanh) on float32[{c['size']}, "
          f"{c['size']}] per branch; median of {c['repeats']} interleaved repeats of "
          f"{c['branch_calls']} calls; XLA_FLAGS={res['meta']['xla_flags']!r}")
    for k, v in b["median_s"].items():
        print(f"  {k:14} {v * 1e3:9.2f} ms")
    print(f"  best repeats: two devices / one device {b['ratio_two_over_one_device_best']:.3f}")
    print(f"  two devices / one device {b['ratio_two_over_one_device']:.3f} (paired per repeat: "
          f"{', '.join(f'{r:.3f}' for r in b['paired_ratios'])}); two devices / unplaced "
          f"{b['ratio_two_devices_over_unplaced']:.3f}")
    print(f"\nper-call overhead: 4-stage chain on float32[{c['small']}], "
          f"{o['subprograms']} subprograms, {o['transfers']} transfers; median of "
          f"{c['repeats']} repeats of {c['calls']} calls")
    for k, v in o["median_us"].items():
        print(f"  {k:17} {v:9.1f} us per call")
    print(f"  overhead: 4 subprograms {o['overhead_us']:.1f} us (best repeats: "
          f"{o['overhead_best_us']:.1f} us), one subprogram "
          f"{o['overhead_one_subprogram_us']:.1f} us")
    worst = max((x for x in (b["foreign_load_max"], o["foreign_load_max"]) if x is not None),
                default=None)
    if worst is not None and worst > DISTURBED_LOAD:
        print(f"WARNING: other processes kept up to {worst:.2f} CPU cores busy "
              f"({res['meta']['cpus']} CPUs): timings are disturbed; rerun on a quiet machine")
    print("\ngoals" + (" (not judged with --quick)" if c["quick"] else ""))
    for g in res["goals"]:
        mark = {True: "PASS", False: "FAIL", None: "-"}[g["passed"]]
        print(f"  {g['goal']:78} {g['value']:9.3f}  {mark}")


def adplugin_source() -> dict[str, Any]:
    root = Path(ap.__file__).resolve().parent
    out: dict[str, Any] = {"commit": None, "uncommitted_changes": None}
    try:
        git = ["git", "-C", str(root)]
        out["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                                       text=True, timeout=30, check=True).stdout.strip()
        status = subprocess.run(git + ["status", "--porcelain", "--", "."],
                                capture_output=True, text=True, timeout=30, check=True)
        out["uncommitted_changes"] = [line[3:] for line in status.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout
    return out


def main(argv: list[str]) -> None:
    del argv
    q = QUICK if FLAGS.quick else {}
    cfg: dict[str, Any] = {k: q.get(k, getattr(FLAGS, k)) for k in (
        "size", "depth", "branch_calls", "small", "calls", "repeats")}
    cfg.update(quick=FLAGS.quick, threaded_devices=FLAGS.threaded_devices)
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    res: dict[str, Any] = {"config": cfg}
    res["branches"] = parallel_branches(cfg)
    res["overhead"] = call_overhead(cfg)
    res["meta"] = {"adplugin": adplugin_source(), "jax": jax.__version__,
                   "devices": [str(d) for d in jax.devices()],
                   "xla_flags": os.environ.get("XLA_FLAGS", ""),
                   "python": platform.python_version(), "machine": platform.machine(),
                   "cpus": os.cpu_count(),
                   "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
                   "total_s": time.perf_counter() - start,
                   "timing": "time.perf_counter; variants interleaved, order rotated per "
                             "repeat; n calls per timing, synced at the end"}
    res["goals"] = goals(res, cfg)
    print_report(res)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} ({res['meta']['total_s']:.0f} s)")


if __name__ == "__main__":
    app.run(main)
