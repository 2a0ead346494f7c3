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
# # Eager dispatch: `ap.*` against `jax.numpy`, per op
#
# Outside any transformation, an `ap.*` op on JAX arrays runs at once, like a `jax.numpy`
# op: it binds its primitive, which runs one cached, compiled executable. On small arrays the
# time of a call is almost all dispatch (Python, argument checks, broadcasting and dtype
# promotion, the executable cache lookup), not arithmetic. This notebook measures that
# per-op latency for a set of common ops, each called with the same arguments as
# `ap.op(...)` and as `jnp.op(...)`.
#
# How: every case is called once first (compiling what it needs), and its values are checked
# against `jax.numpy`'s. Then each case runs `CALLS` calls in a loop, `ap` and `jnp`
# alternately for `ROUNDS` rounds (so drift of the machine hits both alike), and the median
# round gives the time per call. The loop and the alternation are those of the benchmark
# script `benchmarks/primitives_vs_jnp.py`. Reported: **the ratio `ap` / `jnp` per op in the
# same run** (below 1: adplugin dispatches faster). Absolute microseconds depend on the machine
# and are not claims.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import primitives_vs_jnp as bench
from _notebook import SMALL, pick, save_figure, write_result

import adplugin as ap

# %% [markdown]
# ## Settings
#
# `ADPLUGIN_NOTEBOOK_SMALL=1` in the environment picks a few calls per case (the test suite
# runs this notebook that way, in seconds).

# %% tags=["parameters"]
SHAPE = (32, 32)  # a small float32 matrix: dispatch dominates
CALLS = pick(1000, 20)  # calls per timed loop
ROUNDS = pick(7, 2)  # alternating ap / jnp loops per case (median taken)
RTOL, ATOL = 1e-5, 1e-6  # ap's values against jax.numpy's
settings = {"shape": list(SHAPE), "dtype": "float32", "calls": CALLS, "rounds": ROUNDS,
            "rtol": RTOL, "atol": ATOL, "small": SMALL}
print(settings)

# %% [markdown]
# ## The cases
#
# Each: a name, the `ap.*` call and the `jnp.*` call (same arguments).

# %%
rng = np.random.default_rng(0)
x = jnp.asarray(rng.uniform(0.5, 2.0, SHAPE).astype(np.float32))
y = jnp.asarray(rng.uniform(0.5, 2.0, SHAPE).astype(np.float32))
row = jnp.asarray(rng.uniform(0.5, 2.0, SHAPE[-1:]).astype(np.float32))
idx = jnp.asarray(rng.integers(0, SHAPE[0], 8))
flat = (SHAPE[0] // 2, SHAPE[1] * 2)

CASES = [
    ("add", lambda: ap.add(x, y), lambda: jnp.add(x, y)),
    ("subtract (broadcast row)", lambda: ap.subtract(x, row), lambda: jnp.subtract(x, row)),
    ("multiply by Python scalar", lambda: ap.multiply(x, 2.0), lambda: jnp.multiply(x, 2.0)),
    ("divide", lambda: ap.divide(x, y), lambda: jnp.divide(x, y)),
    ("exp", lambda: ap.exp(x), lambda: jnp.exp(x)),
    ("log", lambda: ap.log(x), lambda: jnp.log(x)),
    ("tanh", lambda: ap.tanh(x), lambda: jnp.tanh(x)),
    ("sigmoid", lambda: ap.sigmoid(x), lambda: jax.nn.sigmoid(x)),
    ("maximum", lambda: ap.maximum(x, y), lambda: jnp.maximum(x, y)),
    ("where (comparison included)", lambda: ap.where(x > y, x, y), lambda: jnp.where(x > y, x, y)),
    ("sum (axis 0)", lambda: ap.sum(x, axis=0), lambda: jnp.sum(x, axis=0)),
    ("mean", lambda: ap.mean(x), lambda: jnp.mean(x)),
    ("logsumexp (axis 1)", lambda: ap.logsumexp(x, axis=1),
     lambda: jax.nn.logsumexp(x, axis=1)),
    ("matmul", lambda: ap.matmul(x, y), lambda: jnp.matmul(x, y)),
    ("transpose", lambda: ap.transpose(x), lambda: jnp.transpose(x)),
    ("reshape", lambda: ap.reshape(x, flat), lambda: jnp.reshape(x, flat)),
    ("take (rows)", lambda: ap.take(x, idx, axis=0), lambda: jnp.take(x, idx, axis=0)),
]
print(f"{len(CASES)} cases on {SHAPE} float32")

# %% [markdown]
# ## Values agree
#
# Each case's `ap` result must have `jnp`'s shape and dtype and equal its values, or the
# notebook stops with an error naming the op.

# %%
check = {"rtol": RTOL, "atol": ATOL, "max_abs_diff": {}}
for name, f_ap, f_jnp in CASES:
    got, want = np.asarray(f_ap()), np.asarray(f_jnp())
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{name}: ap gives {got.dtype}{list(got.shape)}, jnp {want.dtype}{list(want.shape)}")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name}: ap != jnp")
    check["max_abs_diff"][name] = float(np.max(np.abs(got - want)))
check["ok"] = True
check["cases"] = len(CASES)
print(f"all {len(CASES)} cases agree with jax.numpy")

# %% [markdown]
# ## Measurement

# %%
rows = []
for name, f_ap, f_jnp in CASES:
    t_ap, t_jnp = bench.interleaved(lambda f=f_ap: bench._loop(f, CALLS),
                                    lambda f=f_jnp: bench._loop(f, CALLS), ROUNDS)
    rows.append({"op": name, "ap_us": t_ap / CALLS * 1e6, "jnp_us": t_jnp / CALLS * 1e6,
                 "ratio_ap_over_jnp": t_ap / t_jnp})
    r = rows[-1]
    print(f"{name:28} ap {r['ap_us']:8.2f} us   jnp {r['jnp_us']:8.2f} us   "
          f"ap/jnp {r['ratio_ap_over_jnp']:6.3f}")
geomean = float(np.exp(np.mean([np.log(r["ratio_ap_over_jnp"]) for r in rows])))
print(f"geometric mean of ap/jnp over {len(rows)} ops: {geomean:.3f}")

# %% [markdown]
# ## Per-op latency, and the ratio in the same run

# %%
names = [r["op"] for r in rows]
pos = np.arange(len(rows))
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 1.5), sharey=True)
left.barh(pos - 0.2, [r["ap_us"] for r in rows], height=0.4, label="ap.*")
left.barh(pos + 0.2, [r["jnp_us"] for r in rows], height=0.4, label="jnp.*")
left.set_yticks(pos, names)
left.invert_yaxis()
left.set_xscale("log")
left.set_xlabel("microseconds per call (median round, log scale)")
left.set_title(f"Eager per-op latency, {SHAPE} float32")
left.legend()
left.grid(True, axis="x", alpha=0.3)
right.barh(pos, [r["ratio_ap_over_jnp"] for r in rows], color="tab:green")
right.axvline(1.0, color="gray", lw=1, ls="--")
right.axvline(geomean, color="tab:red", lw=1, label=f"geometric mean {geomean:.2f}")
right.set_xscale("log")
right.set_xlabel("time ap / time jnp (same run, log scale)")
right.set_title("ap.* over jax.numpy")
right.legend()
right.grid(True, axis="x", alpha=0.3)
save_figure(fig, "nb_eager_dispatch")

# %% [markdown]
# ## Result
#
# Written to `benchmarks/results/nb_eager_dispatch.json` (or `$ADPLUGIN_NOTEBOOK_OUT`), with
# the commit measured, the settings, the value check, every op's times and the ratios.

# %%
ratios = {r["op"]: r["ratio_ap_over_jnp"] for r in rows}
path = write_result("nb_eager_dispatch", settings, check=check, rows=rows, ratios=ratios,
                    geomean_ratio_ap_over_jnp=geomean,
                    peer="jax.numpy (and jax.nn for sigmoid, logsumexp), same arguments")
