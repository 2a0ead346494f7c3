"""The same programs written with `ap.*` and with `jax.numpy`, measured in one run.

(a) compiled step time: a collaborative-filtering cost-and-gradient step on the MovieLens
    practice set (4778 movies x 443 users, 100 features) and a small MLP training step;
(b) eager per-op dispatch time;
(c) the number of ops in the optimized HLO.

Prints a table and writes JSON (ratios ap / jnp: below 1 means adplugin is faster).

    python benchmarks/primitives_vs_jnp.py [--data PATH] [--repeats N] [--quick] [--out FILE]
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _common import DEFAULT_RATINGS, load_ratings, run_meta
from absl import app, flags

import adplugin as ap

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
flags.DEFINE_string("data", str(DEFAULT_RATINGS),
                    "the MovieLens practice set: the shipped .npz or its CSV folder")
flags.DEFINE_integer("repeats", 30, "timed repetitions of each compiled step (median taken)")
flags.DEFINE_integer("features", 100, "collaborative-filtering features")
flags.DEFINE_string("out", str(HERE / "results/primitives_vs_jnp.json"), "JSON output file")
flags.DEFINE_bool("quick", False, "3 repetitions (a smoke run for the test suite)")

LAMBDA = 1.5


# --- the programs, twice ------------------------------------------------------------------------

def cf_cost_ap(X: Any, W: Any, b: Any, Y: Any, R: Any) -> Any:
    err = ap.multiply(ap.subtract(ap.add(ap.matmul(X, ap.transpose(W)), b), Y), R)
    reg = ap.add(ap.sum(ap.square(X)), ap.sum(ap.square(W)))
    return ap.add(ap.multiply(0.5, ap.sum(ap.square(err))), ap.multiply(LAMBDA / 2, reg))


def cf_cost_jnp(X: Any, W: Any, b: Any, Y: Any, R: Any) -> Any:
    err = (jnp.matmul(X, jnp.transpose(W)) + b - Y) * R
    reg = jnp.sum(jnp.square(X)) + jnp.sum(jnp.square(W))
    return 0.5 * jnp.sum(jnp.square(err)) + LAMBDA / 2 * reg


def mlp_loss_ap(params: Any, x: Any, labels: Any) -> Any:
    (w1, b1), (w2, b2) = params
    h = ap.tanh(ap.add(ap.matmul(x, w1), b1))
    logits = ap.add(ap.matmul(h, w2), b2)
    picked = ap.sum(ap.multiply(logits, labels), axis=1)
    return ap.mean(ap.subtract(ap.logsumexp(logits, axis=1), picked))


def mlp_loss_jnp(params: Any, x: Any, labels: Any) -> Any:
    (w1, b1), (w2, b2) = params
    h = jnp.tanh(jnp.matmul(x, w1) + b1)
    logits = jnp.matmul(h, w2) + b2
    picked = jnp.sum(logits * labels, axis=1)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def sgd_step(loss: Callable[..., Any]) -> Callable[..., Any]:
    def step(params: Any, x: Any, labels: Any) -> Any:
        value, grads = jax.value_and_grad(loss)(params, x, labels)
        return value, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    return jax.jit(step)


# --- measuring ----------------------------------------------------------------------------------

def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved(fa: Callable[[], Any], fb: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median times of two programs measured alternately, so drift hits both alike."""
    jax.block_until_ready(fa())
    jax.block_until_ready(fb())
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fa, ta), (fb, tb)):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            acc.append(time.perf_counter() - start)
    return float(np.median(ta)), float(np.median(tb))


_HLO_OP = re.compile(r"^\s*(ROOT\s+)?[%\w.\-]+\s*=\s*\S+\s+([\w\-]+)\(", re.MULTILINE)


def hlo_op_count(jitted: Callable[..., Any], *args: Any) -> int:
    """Instructions in the optimized HLO of every computation (fusions included)."""
    text = jitted.lower(*args).compile().as_text()
    return sum(1 for m in _HLO_OP.finditer(text) if m.group(2) != "parameter")


def compiled_rows(repeats: int) -> list[dict[str, Any]]:
    rows = []
    Y, R = load_ratings(FLAGS.data)
    rng = np.random.default_rng(0)
    n_movies, n_users = Y.shape
    X = (rng.standard_normal((n_movies, FLAGS.features)) * 0.1).astype(np.float32)
    W = (rng.standard_normal((n_users, FLAGS.features)) * 0.1).astype(np.float32)
    b = np.zeros((1, n_users), np.float32)
    args = [jnp.asarray(v) for v in (X, W, b, Y, R)]
    steps = {name: jax.jit(jax.value_and_grad(cost, argnums=(0, 1, 2)))
             for name, cost in (("ap", cf_cost_ap), ("jnp", cf_cost_jnp))}
    np.testing.assert_allclose(steps["ap"](*args)[0], steps["jnp"](*args)[0], rtol=1e-4)
    rows.append(_compiled_row(f"collaborative filtering cost+grad ({n_movies}x{n_users}, "
                              f"{FLAGS.features} features)", steps, args, repeats))

    x = jnp.asarray(rng.standard_normal((256, 784)).astype(np.float32))
    labels = jax.nn.one_hot(rng.integers(0, 10, 256), 10)
    params = [(jnp.asarray(rng.standard_normal((784, 256)).astype(np.float32) * 0.05),
               jnp.zeros(256)),
              (jnp.asarray(rng.standard_normal((256, 10)).astype(np.float32) * 0.05),
               jnp.zeros(10))]
    mlp = {"ap": sgd_step(mlp_loss_ap), "jnp": sgd_step(mlp_loss_jnp)}
    np.testing.assert_allclose(mlp["ap"](params, x, labels)[0], mlp["jnp"](params, x, labels)[0],
                               rtol=1e-5)
    rows.append(_compiled_row("MLP training step (256x784 -> 256 -> 10, SGD)", mlp,
                              [params, x, labels], repeats))
    return rows


def _compiled_row(name: str, steps: dict[str, Any], args: list[Any],
                  repeats: int) -> dict[str, Any]:
    t_ap, t_jnp = interleaved(lambda: steps["ap"](*args), lambda: steps["jnp"](*args), repeats)
    ops_ap, ops_jnp = (hlo_op_count(steps[k], *args) for k in ("ap", "jnp"))
    return {"benchmark": name, "kind": "compiled", "ap_s": t_ap, "jnp_s": t_jnp,
            "ratio": t_ap / t_jnp, "hlo_ops_ap": ops_ap, "hlo_ops_jnp": ops_jnp}


def eager_rows(repeats: int) -> list[dict[str, Any]]:
    x = jnp.ones((64, 64), jnp.float32)
    v = jnp.ones((64,), jnp.float32)
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("add (same shape)", lambda: ap.add(x, x), lambda: jnp.add(x, x)),
        ("multiply by Python scalar", lambda: ap.multiply(x, 2.0), lambda: jnp.multiply(x, 2.0)),
        ("add with broadcasting", lambda: ap.add(x, v), lambda: jnp.add(x, v)),
        ("exp", lambda: ap.exp(x), lambda: jnp.exp(x)),
        ("sum over an axis", lambda: ap.sum(x, axis=0), lambda: jnp.sum(x, axis=0)),
        ("matmul", lambda: ap.matmul(x, x), lambda: jnp.matmul(x, x)),
        ("reshape", lambda: ap.reshape(x, (32, 128)), lambda: jnp.reshape(x, (32, 128))),
    ]
    rows = []
    for name, f_ap, f_jnp in cases:
        per = max(200, repeats * 20)
        t_ap, t_jnp = interleaved(lambda f=f_ap, n=per: _loop(f, n),
                                 lambda f=f_jnp, n=per: _loop(f, n), 5)
        rows.append({"benchmark": f"eager {name}", "kind": "eager", "ap_s": t_ap / per,
                     "jnp_s": t_jnp / per, "ratio": t_ap / t_jnp})
    return rows


def _loop(fn: Callable[[], Any], n: int) -> Any:
    out = None
    for _ in range(n):
        out = fn()
    return out


def main(argv: list[str]) -> None:
    del argv
    repeats = 3 if FLAGS.quick else FLAGS.repeats
    rows = compiled_rows(repeats) + eager_rows(repeats)
    print(f"{'benchmark':58} {'ap':>11} {'jnp':>11} {'ap/jnp':>7} {'HLO ops ap/jnp':>15}")
    for r in rows:
        ops = f"{r['hlo_ops_ap']}/{r['hlo_ops_jnp']}" if "hlo_ops_ap" in r else ""
        unit, scale = ("ms", 1e3) if r["kind"] == "compiled" else ("us", 1e6)
        print(f"{r['benchmark']:58} {r['ap_s'] * scale:8.3f} {unit} {r['jnp_s'] * scale:8.3f} "
              f"{unit} {r['ratio']:7.3f} {ops:>15}")
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = run_meta()
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
