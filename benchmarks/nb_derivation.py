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
# # How derivation scales: adplugin's graph derivation against JAX and SymPy
#
# The program is a chain of *n* operations on a scalar *x*, alternating `sin` and multiply:
# `y = x`, then `y = sin(y)`, `y = y * x`, ... We differentiate it three ways, in this run,
# on this machine:
#
# - **adplugin**: `ap.gradients(y, [x])` on the operation graph (building the forward graph is
#   timed apart; the derived graph's size is counted after `ap.simplify`);
# - **JAX**: `jax.make_jaxpr(jax.grad(f))(x0)` of the same chain written with `jax.numpy`. This
#   includes tracing `f` in Python, which adplugin's number does not (its forward graph exists
#   before `gradients` is called), so the trace alone (`jax.make_jaxpr(f)`) is shown too;
# - **SymPy**: `sympy.diff` of the chain as an expression, on the smaller sizes only: the
#   expression of the derivative swells with *n* (its `count_ops` is plotted).
#
# The measuring functions are those of the benchmark script `benchmarks/derivation.py`
# (best of a few repeats, a fresh graph or function each repeat, `gc.collect()` before each).
# Timings are compared as **ratios against a peer measured in the same run**; the absolute
# seconds depend on the machine and are not claims.
#
# Before anything is timed, the derivative is checked: adplugin's derived graph (as built and
# after simplification), `jax.grad` and SymPy's derivative must agree at *x* = 0.7, or the
# notebook stops with an error.

# %%
import math
from functools import partial

import derivation as bench
import jax
import matplotlib.pyplot as plt
import numpy as np
from _notebook import SMALL, pick, save_figure, write_result

import adplugin as ap

# %% [markdown]
# ## Settings
#
# `ADPLUGIN_NOTEBOOK_SMALL=1` in the environment picks tiny sizes (the test suite runs this
# notebook that way, in seconds).

# %% tags=["parameters"]
SIZES = pick([10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000], [10, 20, 50, 100])
SYMPY_MAX = pick(200, 20)  # SymPy's diff only up to this n: the expression swells
REPEATS = pick(3, 1)  # best of this many timings of each
CHECK_N = pick(50, 20)  # chain length of the three-way value check
RTOL = 1e-5  # adplugin against jax.grad (both float32)
SYMPY_RTOL = 1e-4  # SymPy (exact, evaluated in float64) against jax.grad (float32)
settings = {"sizes": SIZES, "sympy_max": SYMPY_MAX, "repeats": REPEATS, "check_n": CHECK_N,
            "rtol": RTOL, "sympy_rtol": SYMPY_RTOL, "x0": bench.X0, "small": SMALL}
print(settings)

# %% [markdown]
# ## The derivative, checked three ways
#
# `bench.check_value` runs adplugin's derived graph (and its simplified form) at *x* = 0.7 and
# raises unless both equal `jax.grad`. SymPy's derivative is evaluated at the same float32 *x*.

# %%
check = bench.check_value(CHECK_N)


def sympy_derivative_at(n: int, x0: float) -> float:
    import sympy

    x, y = bench.chain_sympy(n)
    return float(sympy.diff(y, x).evalf(subs={x: x0}))


x32 = float(np.float32(bench.X0))  # the float32 x that jax.grad and adplugin see
check["sympy"] = bench.in_big_stack(partial(sympy_derivative_at, CHECK_N, x32))
check["sympy_rel_diff"] = abs(check["sympy"] - check["jax_grad"]) / abs(check["jax_grad"])
check["adplugin_rel_diff"] = abs(check["adplugin"] - check["jax_grad"]) / abs(check["jax_grad"])
assert check["ok"] and check["adplugin_rel_diff"] <= RTOL, check
assert check["sympy_rel_diff"] <= SYMPY_RTOL, (
    f"SymPy's derivative {check['sympy']} disagrees with jax.grad's {check['jax_grad']}")
print(f"n={CHECK_N}, x={bench.X0}: adplugin {check['adplugin']:.8g} "
      f"(simplified {check['adplugin_simplified']:.8g}), jax.grad {check['jax_grad']:.8g}, "
      f"SymPy {check['sympy']:.8g}")

# %% [markdown]
# ## Measurement
#
# One warm-up of each (imports, caches), then every size. Per size: adplugin's `gradients`
# and graph size, JAX's `make_jaxpr(grad)` and `make_jaxpr`, and SymPy's `diff` with the
# `count_ops` of the chain and of its derivative (up to `SYMPY_MAX`).

# %%
bench.measure_ap(10, 1)
bench.measure_jax(10, 1)
bench.measure_sympy(10, count=True)

rows = []
for n in SIZES:
    row = {"n": n, **bench.measure_ap(n, REPEATS), **bench.measure_jax(n, REPEATS)}
    row["ratio_ap_over_jax"] = row["ap_gradients_s"] / row["jax_grad_jaxpr_s"]
    if n <= SYMPY_MAX:
        row.update(bench.measure_sympy(n, count=True))
        if row.get("sympy_diff_s"):
            row["ratio_ap_over_sympy"] = row["ap_gradients_s"] / row["sympy_diff_s"]
    rows.append(row)
    print(f"n={n:6d}  ap.gradients {row['ap_gradients_s'] * 1e3:9.2f} ms  "
          f"jax make_jaxpr(grad) {row['jax_grad_jaxpr_s'] * 1e3:9.2f} ms  "
          f"ap/jax {row['ratio_ap_over_jax']:6.3f}  "
          f"derivative ops per forward op {row['derivative_nodes_per_forward_node']:.2f}")

scaling = bench.scaling(rows)
print(scaling)

# %% [markdown]
# ## Time against *n*
#
# A straight line of slope 1 on these log-log axes is linear scaling. SymPy's points stop at
# `SYMPY_MAX`.

# %%
ns = np.array([r["n"] for r in rows])
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(ns, [r["ap_gradients_s"] for r in rows], "o-", label="adplugin: ap.gradients")
ax.loglog(ns, [r["jax_grad_jaxpr_s"] for r in rows], "s-",
          label="JAX: make_jaxpr(grad(f)) (tracing f included)")
ax.loglog(ns, [r["jax_trace_s"] for r in rows], "s:", alpha=0.6,
          label="JAX: make_jaxpr(f) (tracing alone)")
sym = [(r["n"], r["sympy_diff_s"]) for r in rows if r.get("sympy_diff_s")]
if sym:
    ax.loglog(*zip(*sym), "^-", label="SymPy: diff")
ax.set_xlabel("chain length n (forward ops)")
ax.set_ylabel("seconds (best of repeats)")
ax.set_title("Deriving the gradient of an n-op chain")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
save_figure(fig, "nb_derivation_time")

# %% [markdown]
# ## Ratios in the same run, and the size of the derived graph
#
# Left: adplugin's time over JAX's (below 1: adplugin derives faster). Right: derivative ops
# per forward op in the gradient graph after `ap.simplify` (the goal is at most 4).

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
left.semilogx(ns, [r["ratio_ap_over_jax"] for r in rows], "o-")
left.axhline(1.0, color="gray", lw=1, ls="--")
left.set_xlabel("chain length n")
left.set_ylabel("time ap.gradients / time JAX make_jaxpr(grad)")
left.set_title("adplugin / JAX, same run")
left.grid(True, which="both", alpha=0.3)
right.semilogx(ns, [r["derivative_nodes_per_forward_node"] for r in rows], "o-",
               label="after ap.simplify")
right.semilogx(ns, [r["derivative_nodes_per_forward_node_raw"] for r in rows], "o:",
               label="as derived")
right.axhline(bench.GOAL_NODES_PER_FORWARD, color="gray", lw=1, ls="--", label="goal")
right.set_xlabel("chain length n")
right.set_ylabel("derivative ops per forward op")
right.set_title("Size of the derived gradient graph")
right.grid(True, which="both", alpha=0.3)
right.legend()
save_figure(fig, "nb_derivation_ratios")

# %% [markdown]
# ## SymPy's expression swell
#
# SymPy differentiates an expression tree, so shared subexpressions are repeated: the count of
# operations in *dy/dx* grows faster than *n*. adplugin's derived graph shares them.

# %%
swell = [r for r in rows if r.get("sympy_ops_diff") is not None]
fig, ax = plt.subplots(figsize=(7, 4.5))
if swell:
    sn = [r["n"] for r in swell]
    ax.loglog(sn, [r["sympy_ops_f"] for r in swell], "^:", label="SymPy: count_ops(y)")
    ax.loglog(sn, [r["sympy_ops_diff"] for r in swell], "^-", label="SymPy: count_ops(dy/dx)")
    ax.loglog(sn, [r["ap_ops_gradient_simplified"] for r in swell], "o-",
              label="adplugin: ops of the simplified gradient graph")
ax.set_xlabel("chain length n")
ax.set_ylabel("operations")
ax.set_title("Derivative size: expression tree against graph")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
save_figure(fig, "nb_derivation_swell")

# %% [markdown]
# ## Result
#
# Written to `benchmarks/results/nb_derivation.json` (or `$ADPLUGIN_NOTEBOOK_OUT`), with the
# commit measured, the settings, the value check, every row and the ratios.

# %%
ratios = {"ap_over_jax": {str(r["n"]): r["ratio_ap_over_jax"] for r in rows},
          "ap_over_sympy": {str(r["n"]): r["ratio_ap_over_sympy"] for r in rows
                            if "ratio_ap_over_sympy" in r}}
assert all(math.isfinite(v) and v > 0 for v in ratios["ap_over_jax"].values())
versions = {"jax": jax.__version__, "sympy": __import__("sympy").__version__,
            "adplugin_primitives": len(ap.list_primitives())}
path = write_result("nb_derivation", settings, check=check, rows=rows, ratios=ratios,
                    scaling=scaling, versions=versions,
                    peers={"jax": "jax.make_jaxpr(jax.grad(f))(x0), tracing f included",
                           "sympy": f"sympy.diff, n <= {SYMPY_MAX}"})
