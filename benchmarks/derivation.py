"""How derivation scales: `ap.gradients` on a long chain, against its peers in the same run.

The program: a chain of n nodes alternating `sin` and `mul` (y = x; then y = sin(y), y = y * x,
...; x a scalar placeholder). Measured per n:

- adplugin: time of `ap.gradients(y, [x])` (best of --repeats, a fresh graph each repeat; building
  the forward graph is timed apart), and the size of the derived graph after `ap.simplify`: ops
  the gradient needs minus the n forward ops, per forward node;
- JAX (always): time of `jax.make_jaxpr(jax.grad(f))(x0)` for the same chain written with
  `jax.numpy`. This includes tracing f in Python (timed apart as `jax.make_jaxpr(f)`), which
  adplugin's number does not: its forward graph exists before `gradients` is called;
- TensorFlow (when `import tensorflow` works): `tf.compat.v1.gradients` inside a `tf.Graph`;
- SymPy (when it imports): `sympy.diff` of the chain expression, only for n <= --sympy_max (the
  expression swells; its own small sizes, --sympy_sizes, show how).

Before timing anything it checks the derivative: the graph is run at x = 0.7 for a small chain
and must equal `jax.grad` of the jnp chain, or the benchmark stops.

Prints a table and writes JSON with the ratios adplugin / JAX per size and the goals (10k-node
gradient < 1 s, <= 4 derivative nodes per forward node, time(20k) / time(10k) < 2.3).

    python benchmarks/derivation.py [--sizes 1000,2000,...] [--repeats 3] [--quick] [--out FILE]
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _common import run_meta
from absl import app, flags

import adplugin as ap
from adplugin.ir.graph import DERIVATIVE
from adplugin.ir.printing import needed_nodes
from adplugin.transforms.simplify import op_count

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["1000", "2000", "5000", "10000", "20000"], "chain lengths n")
flags.DEFINE_integer("repeats", 3, "best of this many `ap.gradients` timings (fresh graph each)")
flags.DEFINE_integer("peer_repeats", 3, "best of this many timings of each peer (JAX's "
                     "make_jaxpr(grad) takes ~10 s at n=20000; one warm-up runs before)")
flags.DEFINE_integer("sympy_max", 200, "largest n of the main sizes given to SymPy's diff")
flags.DEFINE_list("sympy_sizes", ["25", "50", "100", "200"],
                  "small chain lengths for the SymPy expression-swell table")
flags.DEFINE_integer("check_n", 50, "chain length of the value check against jax.grad")
flags.DEFINE_bool("quick", False, "tiny sizes, one repeat (for the smoke test)")
flags.DEFINE_string("out", str(HERE / "results/derivation.json"), "JSON output file")

X0 = 0.7
GOAL_SECONDS_10K = 1.0
GOAL_NODES_PER_FORWARD = 4.0
GOAL_SCALING = 2.3
QUICK = {"sizes": [200, 400], "repeats": 1, "peer_repeats": 1, "sympy_sizes": [10, 20],
         "sympy_max": 20, "check_n": 20}


# --- the chain, three ways ----------------------------------------------------------------------

def chain_ap(n: int) -> tuple[ap.Graph, ap.Tensor, ap.Tensor]:
    """A fresh graph with x and the chain's output y (n forward ops)."""
    with ap.Graph(name=f"chain{n}") as g:
        x = ap.placeholder((), name="x")
        y = x
        for i in range(n):
            y = ap.sin(y) if i % 2 == 0 else y * x
    return g, x, y


def chain_jnp(x: Any, n: int) -> Any:
    y = x
    for i in range(n):
        y = jnp.sin(y) if i % 2 == 0 else y * x
    return y


def chain_sympy(n: int) -> tuple[Any, Any]:
    import sympy

    x = sympy.Symbol("x")
    y = x
    for i in range(n):
        y = sympy.sin(y) if i % 2 == 0 else y * x
    return x, y


# --- the value check ----------------------------------------------------------------------------

def check_value(n: int) -> dict[str, Any]:
    """The derived gradient at x=0.7 (as built and simplified) must equal jax.grad's."""
    g, x, y = chain_ap(n)
    with g:
        (gx,) = ap.gradients(y, [x])
    got = float(g.run(gx, {x: X0}))
    g2, mapping = ap.simplify(g, [gx])
    (x2,) = g2.placeholders
    got_simplified = float(g2.run(mapping[gx.node.id], {x2: X0}))
    want = float(jax.grad(partial(chain_jnp, n=n))(jnp.float32(X0)))
    ok = bool(np.allclose([got, got_simplified], want, rtol=1e-5, atol=0.0)) and want != 0.0
    if not ok:
        raise AssertionError(f"ap.gradients of the {n}-node chain at x={X0} gives {got} "
                             f"({got_simplified} simplified), jax.grad gives {want}: the "
                             "derivative is wrong, so no timings are reported")
    return {"n": n, "x": X0, "adplugin": got, "adplugin_simplified": got_simplified,
            "jax_grad": want, "ok": ok}


# --- measuring ----------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure_ap(n: int, repeats: int) -> dict[str, Any]:
    grad_times, build_times = [], []
    for _ in range(repeats):
        t_build, (g, x, y) = timed(partial(chain_ap, n))

        def derive(g: ap.Graph = g, x: ap.Tensor = x, y: ap.Tensor = y) -> ap.Tensor:
            with g:
                return ap.gradients(y, [x])[0]

        t_grad, gx = timed(derive)
        build_times.append(t_build)
        grad_times.append(t_grad)
    t_simplify, (g2, mapping) = timed(lambda: ap.simplify(g, [gx]))
    new = mapping[gx.node.id]
    raw, simplified = op_count(g, [gx]), op_count(g2, [new])
    derivative_role = sum(1 for node in needed_nodes(g2, [new])
                          if node.kind == "op" and node.role == DERIVATIVE)
    return {"ap_gradients_s": min(grad_times), "ap_build_s": min(build_times),
            "ap_simplify_s": t_simplify, "ap_ops_gradient_raw": raw,
            "ap_ops_gradient_simplified": simplified,
            "derivative_nodes_per_forward_node": (simplified - n) / n,
            "derivative_nodes_per_forward_node_raw": (raw - n) / n,
            "derivative_role_nodes_per_forward_node": derivative_role / n}


def measure_jax(n: int, repeats: int) -> dict[str, Any]:
    """A fresh function each time: make_jaxpr caches traces by function identity."""
    x0 = jnp.float32(X0)

    def fresh() -> Callable[[Any], Any]:
        return lambda x: chain_jnp(x, n)

    t_trace = min(timed(lambda: jax.make_jaxpr(fresh())(x0))[0] for _ in range(repeats))
    t_grad = min(timed(lambda: jax.make_jaxpr(jax.grad(fresh()))(x0))[0] for _ in range(repeats))
    return {"jax_grad_jaxpr_s": t_grad, "jax_trace_s": t_trace}


def tensorflow_module() -> tuple[Any, str | None]:
    try:
        import tensorflow as tf
    except Exception as e:  # ImportError, or a broken install
        return None, f"import tensorflow failed: {type(e).__name__}: {e}"
    return tf, None


def measure_tf(tf: Any, n: int, repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, shape=(), name="x")
            y = x
            for i in range(n):
                y = tf.sin(y) if i % 2 == 0 else y * x
            times.append(timed(lambda x=x, y=y: tf.compat.v1.gradients(y, [x]))[0])
    return {"tf_gradients_s": min(times)}


def in_big_stack(fn: Callable[[], Any]) -> Any:
    """Run fn in a thread with a large stack and recursion limit (SymPy recurses per level)."""
    result: dict[str, Any] = {}

    def target() -> None:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 200_000))
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported, not raised
            result["error"] = e
        finally:
            sys.setrecursionlimit(limit)

    old = threading.stack_size(512 * 1024 * 1024)
    try:
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)
    if "error" in result:
        raise result["error"]
    return result["value"]


def measure_sympy(n: int, count: bool) -> dict[str, Any]:
    import sympy

    def run() -> dict[str, Any]:
        x, y = chain_sympy(n)
        t, d = timed(lambda: sympy.diff(y, x))
        out: dict[str, Any] = {"sympy_diff_s": t}
        if count:
            out["sympy_ops_f"] = int(sympy.count_ops(y))
            out["sympy_ops_diff"] = int(sympy.count_ops(d))
        return out

    try:
        return in_big_stack(run)
    except RecursionError as e:
        return {"sympy_diff_s": None, "sympy_skipped": f"RecursionError: {e}"}


# --- report -------------------------------------------------------------------------------------

def _fmt(v: Any, spec: str = "9.4f") -> str:
    return "—".rjust(int(spec.split(".")[0])) if v is None else format(v, spec)


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_n = {r["n"]: r for r in rows}
    t10 = by_n.get(10000, {}).get("ap_gradients_s")
    t20 = by_n.get(20000, {}).get("ap_gradients_s")
    worst = max(r["derivative_nodes_per_forward_node"] for r in rows)
    ratio = t20 / t10 if t10 and t20 else None
    return [
        {"goal": "10k-node gradient < 1 s", "value": t10, "target": GOAL_SECONDS_10K,
         "passed": None if t10 is None else t10 < GOAL_SECONDS_10K},
        {"goal": "<= 4 derivative nodes per forward node (after simplify, worst size)",
         "value": worst, "target": GOAL_NODES_PER_FORWARD,
         "passed": worst <= GOAL_NODES_PER_FORWARD},
        {"goal": "time(20k) / time(10k) < 2.3", "value": ratio, "target": GOAL_SCALING,
         "passed": None if ratio is None else ratio < GOAL_SCALING},
    ]


def scaling(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """time(20k)/time(10k) when both were measured, else the two largest sizes."""
    by_n = {r["n"]: r for r in rows}
    a, b = (10000, 20000) if {10000, 20000} <= by_n.keys() else sorted(by_n)[-2:]
    ta, tb = by_n[a]["ap_gradients_s"], by_n[b]["ap_gradients_s"]
    out: dict[str, Any] = {"from_n": a, "to_n": b, "ap_time_ratio": tb / ta}
    if by_n[a].get("jax_grad_jaxpr_s") and by_n[b].get("jax_grad_jaxpr_s"):
        out["jax_time_ratio"] = by_n[b]["jax_grad_jaxpr_s"] / by_n[a]["jax_grad_jaxpr_s"]
    return out


def print_report(result: dict[str, Any]) -> None:
    c = result["check"]
    print(f"value check (n={c['n']}, x={c['x']}): ap.gradients {c['adplugin']:.8g}, simplified "
          f"{c['adplugin_simplified']:.8g}, jax.grad {c['jax_grad']:.8g}: ok")
    print("\nchain of n nodes alternating sin and mul; seconds, best of the repeats")
    print(f"{'n':>6} {'ap grads':>9} {'ap build':>9} {'simplify':>9} {'deriv/fwd':>9} "
          f"{'raw':>5} {'jax grad':>9} {'jax trace':>9} {'ap/jax':>7} {'tf':>9} {'sympy':>9}")
    for r in result["rows"]:
        print(f"{r['n']:6d} {r['ap_gradients_s']:9.4f} {r['ap_build_s']:9.4f} "
              f"{r['ap_simplify_s']:9.4f} {r['derivative_nodes_per_forward_node']:9.3f} "
              f"{r['derivative_nodes_per_forward_node_raw']:5.2f} "
              f"{_fmt(r.get('jax_grad_jaxpr_s'))} {_fmt(r.get('jax_trace_s'))} "
              f"{_fmt(r.get('ratio_ap_over_jax'), '7.3f')} {_fmt(r.get('tf_gradients_s'))} "
              f"{_fmt(r.get('sympy_diff_s'))}")
    s = result["scaling"]
    jr = f", JAX {s['jax_time_ratio']:.2f}" if "jax_time_ratio" in s else ""
    print(f"time({s['to_n']}) / time({s['from_n']}): adplugin {s['ap_time_ratio']:.2f}{jr}")
    for name, peer in result["peers"].items():
        if peer.get("skipped"):
            print(f"{name}: {peer['skipped']}")
    if result["swell"]:
        print("\nSymPy expression swell (same chain): count_ops of y and dy/dx; adplugin: "
              "gradient ops after simplify")
        print(f"{'n':>6} {'sympy diff s':>12} {'ops y':>7} {'ops dy/dx':>10} {'ap grads s':>10} "
              f"{'ap ops':>7}")
        for w in result["swell"]:
            print(f"{w['n']:6d} {_fmt(w['sympy_diff_s'], '12.4f')} "
                  f"{_fmt(w.get('sympy_ops_f'), '7d')} {_fmt(w.get('sympy_ops_diff'), '10d')} "
                  f"{w['ap_gradients_s']:10.4f} "
                  f"{w['ap_ops_gradient_simplified']:7d}")
    print("\ngoals")
    for gl in result["goals"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a (size not measured)"}[gl["passed"]]
        value = "—" if gl["value"] is None else f"{gl['value']:.3f}"
        print(f"  {gl['goal']:70} {value:>8}  {mark}")


def run(sizes: list[int], repeats: int, peer_repeats: int, sympy_sizes: list[int],
        sympy_max: int, check_n: int) -> dict[str, Any]:
    check = check_value(check_n)
    tf, tf_skip = tensorflow_module()
    try:
        import sympy
    except ImportError as e:
        sympy, sympy_skip = None, f"import sympy failed: {e}"
    else:
        sympy_skip = None
    # warm up (imports, caches) so the first size is not charged for them
    measure_ap(10, 1)
    measure_jax(10, 1)
    if sympy is not None:
        measure_sympy(10, count=True)

    rows = []
    sympy_skipped = []
    for n in sizes:
        row: dict[str, Any] = {"n": n, **measure_ap(n, repeats), **measure_jax(n, peer_repeats)}
        row["ratio_ap_over_jax"] = row["ap_gradients_s"] / row["jax_grad_jaxpr_s"]
        if tf is not None:
            row.update(measure_tf(tf, n, peer_repeats))
            row["ratio_ap_over_tf"] = row["ap_gradients_s"] / row["tf_gradients_s"]
        if sympy is not None and n <= sympy_max:
            row.update(measure_sympy(n, count=False))
        elif sympy is not None:
            sympy_skipped.append(n)
        rows.append(row)
        print(f"  measured n={n}", flush=True)

    swell = []
    if sympy is not None:
        for n in sympy_sizes:
            ap_row = measure_ap(n, repeats)
            swell.append({"n": n, **measure_sympy(n, count=True),
                          "ap_gradients_s": ap_row["ap_gradients_s"],
                          "ap_ops_gradient_simplified": ap_row["ap_ops_gradient_simplified"]})

    peers: dict[str, Any] = {
        "jax": {"available": True, "measured": "jax.make_jaxpr(jax.grad(f))(x0), f traced "
                "in Python included (jax_trace_s: make_jaxpr(f) alone)"},
        "tensorflow": {"available": tf is not None, "skipped": tf_skip,
                       "measured": "tf.compat.v1.gradients in a tf.Graph"},
        "sympy": {"available": sympy is not None, "max_n": sympy_max,
                  "skipped_sizes": sympy_skipped,
                  "skipped": sympy_skip or (f"sympy.diff skipped for n = "
                                            f"{', '.join(map(str, sympy_skipped))} > "
                                            f"--sympy_max={sympy_max} (expression swell; "
                                            "see the swell table)" if sympy_skipped else None)},
    }
    meta = {**run_meta(), "processor": platform.processor(),
            "sympy": getattr(sympy, "__version__", None),
            "tensorflow": getattr(tf, "__version__", None)}
    config = {"sizes": sizes, "repeats": repeats, "peer_repeats": peer_repeats,
              "sympy_sizes": sympy_sizes, "sympy_max": sympy_max, "check_n": check_n,
              "quick": FLAGS.quick, "timing": "time.perf_counter, best of repeats, "
              "gc.collect() before each, gc enabled"}
    return {"meta": meta, "config": config, "check": check, "rows": rows,
            "ratio_ap_over_jax": {str(r["n"]): r["ratio_ap_over_jax"] for r in rows},
            "scaling": scaling(rows), "goals": goals(rows), "peers": peers, "swell": swell}


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.quick:
        cfg = dict(QUICK)
    else:
        cfg = {"sizes": [int(s) for s in FLAGS.sizes], "repeats": FLAGS.repeats,
               "peer_repeats": FLAGS.peer_repeats,
               "sympy_sizes": [int(s) for s in FLAGS.sympy_sizes], "sympy_max": FLAGS.sympy_max,
               "check_n": FLAGS.check_n}
    start = time.perf_counter()
    result = run(**cfg)
    result["meta"]["total_s"] = time.perf_counter() - start
    print_report(result)
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['meta']['total_s']:.0f} s)")


if __name__ == "__main__":
    app.run(main)
