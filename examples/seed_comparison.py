"""Three ways to differentiate f(a, b) = 2ab² + 3a²b, side by side with adplugin.

At a=2, b=3: f = 72, ∂f/∂a = 2b² + 6ab = 54, ∂²f/∂a∂b = 4b + 6a = 24.

(i)   numerical differentiation (forward and central differences, float64 NumPy) for step sizes
      h = 1e-1 ... 1e-10: the error first falls with h (truncation error, ~h for forward, ~h² for
      central) and then rises again (round-off error, ~eps·|f|/h);
(ii)  symbolic differentiation with SymPy (skipped when SymPy is not installed): the derivative
      expressions, their size (sympy.count_ops) and expression swell on a deeper example;
(iii) adplugin's graph derivation: `ap.gradients` twice, exact up to float rounding; the
      derived graph as text, its size before and after `ap.simplify`;
(iv)  `jax.grad` of the same function written with `ap.*` ops on JAX arrays.

    python examples/seed_comparison.py [--a 2.0] [--b 3.0] [--steps 1e-1,1e-2,...]
                                       [--swell_depth 4] [--dot grad.dot]

The computations are functions returning dicts (`compare(a, b)` runs them all), so tests can call
them; `main` prints the report.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

import adplugin as ap
from adplugin.ir.printing import render
from adplugin.transforms.simplify import op_count

DEFAULT_STEPS = tuple(10.0 ** -k for k in range(1, 11))  # 1e-1 ... 1e-10


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_float("a", 2.0, "value of a", flag_values=fv)
    flags.DEFINE_float("b", 3.0, "value of b", flag_values=fv)
    flags.DEFINE_list("steps", [f"{h:g}" for h in DEFAULT_STEPS],
                      "finite-difference step sizes h", flag_values=fv)
    flags.DEFINE_integer("swell_depth", 4, "depth of the SymPy expression-swell example "
                         "(logistic map l_{k+1} = 4 l_k (1 - l_k))", flag_values=fv)
    flags.DEFINE_string("dot", None, "write the Graphviz DOT of the gradient graph here (and "
                        "render it next to it as SVG when Graphviz `dot` is installed)",
                        flag_values=fv)


# --- the function and its exact derivatives ------------------------------------------------------

def f_numpy(a: float, b: float) -> float:
    return 2 * a * b**2 + 3 * a**2 * b


def exact(a: float, b: float) -> dict[str, float]:
    """By hand: f, ∂f/∂a = 2b² + 6ab, ∂²f/∂a∂b = 4b + 6a."""
    return {"f": f_numpy(a, b), "df_da": 2 * b**2 + 6 * a * b, "d2f_dadb": 4 * b + 6 * a}


# --- (i) numerical differentiation ---------------------------------------------------------------

def numerical(a: float, b: float, steps: Sequence[float] = DEFAULT_STEPS) -> dict[str, Any]:
    """Forward and central differences (float64) and their absolute errors, per step size h."""
    f = f_numpy
    a, b = np.float64(a), np.float64(b)
    ref = exact(float(a), float(b))
    rows = []
    for h in steps:
        h = np.float64(h)
        fwd = (f(a + h, b) - f(a, b)) / h
        cen = (f(a + h, b) - f(a - h, b)) / (2 * h)
        # nested differences for the mixed derivative: d/db of (d/da f)
        fwd2 = (f(a + h, b + h) - f(a + h, b) - f(a, b + h) + f(a, b)) / h**2
        cen2 = (f(a + h, b + h) - f(a + h, b - h) - f(a - h, b + h) + f(a - h, b - h)) / (4 * h**2)
        rows.append({
            "h": float(h),
            "forward": float(fwd), "forward_error": abs(float(fwd) - ref["df_da"]),
            "central": float(cen), "central_error": abs(float(cen) - ref["df_da"]),
            "forward2": float(fwd2), "forward2_error": abs(float(fwd2) - ref["d2f_dadb"]),
            "central2": float(cen2), "central2_error": abs(float(cen2) - ref["d2f_dadb"]),
        })
    best = {k: min(rows, key=lambda r, k=k: r[f"{k}_error"])["h"]
            for k in ("forward", "central", "forward2", "central2")}
    return {"f": float(f(a, b)), "rows": rows, "best_h": best}


# --- (ii) symbolic differentiation ---------------------------------------------------------------

def symbolic(a: float, b: float, swell_depth: int = 4) -> dict[str, Any] | None:
    """SymPy's derivatives, their values and sizes, and expression swell; None without SymPy."""
    try:
        import sympy
    except ImportError:
        return None
    A, B = sympy.symbols("a b")
    f = 2 * A * B**2 + 3 * A**2 * B
    df_da = sympy.diff(f, A)
    d2f = sympy.diff(df_da, B)
    at = {A: a, B: b}
    out: dict[str, Any] = {
        "expressions": {"f": str(f), "df_da": str(df_da), "d2f_dadb": str(d2f)},
        "values": {"f": float(f.subs(at)), "df_da": float(df_da.subs(at)),
                   "d2f_dadb": float(d2f.subs(at))},
        "count_ops": {"f": int(sympy.count_ops(f)), "df_da": int(sympy.count_ops(df_da)),
                      "d2f_dadb": int(sympy.count_ops(d2f))},
    }
    # Expression swell: the logistic map l_1 = x, l_{k+1} = 4 l_k (1 - l_k) (the example of
    # Baydin et al., "Automatic differentiation in machine learning: a survey"). diff applies
    # the product rule to the whole tree; the graph derivation reuses every intermediate.
    x = sympy.Symbol("x")
    level = x
    swell = []
    for k in range(1, swell_depth + 1):
        level = 4 * level * (1 - level)
        d = sympy.diff(level, x)
        swell.append({
            "depth": k, "ops_f": int(sympy.count_ops(level)), "ops_diff": int(sympy.count_ops(d)),
            "ops_diff_simplified": int(sympy.count_ops(sympy.simplify(d))),
            "ap_ops_f": _logistic_ap_ops(k)[0], "ap_ops_gradient": _logistic_ap_ops(k)[1],
        })
    out["swell"] = swell
    return out


def _logistic_ap_ops(depth: int) -> tuple[int, int]:
    """adplugin's op counts of the logistic map and of its simplified gradient graph."""
    with ap.Graph() as g:
        x = ap.placeholder((), name="x")
        level = x
        for _ in range(depth):
            level = 4 * level * (1 - level)
        (dx,) = ap.gradients(level, [x])
    g2, new = simplify_outputs(g, [dx])
    return op_count(g, [level]), op_count(g2, new)


# --- (iii) adplugin graph derivation -------------------------------------------------------------

def simplify_outputs(graph: ap.Graph, outputs: Sequence[ap.Tensor]) -> tuple[ap.Graph, list[Any]]:
    """`ap.simplify` and the outputs' tensors in the new graph."""
    new_graph, mapping = ap.simplify(graph, outputs)
    return new_graph, [mapping[t.node.id] for t in outputs]


def build_graph() -> tuple[ap.Graph, dict[str, ap.Tensor]]:
    """The graph of f with ∂f/∂a and ∂²f/∂a∂b appended by `ap.gradients`."""
    with ap.Graph(name="seed") as g:
        a = ap.placeholder((), name="a")
        b = ap.placeholder((), name="b")
        f = 2 * a * b**2 + 3 * a**2 * b
        (da,) = ap.gradients(f, [a])
        (dab,) = ap.gradients(da, [b])
    return g, {"a": a, "b": b, "f": f, "df_da": da, "d2f_dadb": dab}


def graph_derivation(a: float, b: float) -> dict[str, Any]:
    g, t = build_graph()
    f_v, da_v, dab_v = g.run([t["f"], t["df_da"], t["d2f_dadb"]], {t["a"]: a, t["b"]: b})
    counts = {}
    for name in ("f", "df_da", "d2f_dadb"):
        g2, (new,) = simplify_outputs(g, [t[name]])
        counts[name] = {"before": op_count(g, [t[name]]), "after": op_count(g2, [new])}
    g2, (da2,) = simplify_outputs(g, [t["df_da"]])
    return {
        "values": {"f": float(f_v), "df_da": float(da_v), "d2f_dadb": float(dab_v)},
        "op_count": counts,
        "text": g.to_text([t["df_da"]]),
        "text_simplified": g2.to_text([da2]),
        "dot": g.to_dot([t["f"], t["df_da"], t["d2f_dadb"]]),
        "graph_nodes": len(g.nodes),
    }


# --- (iv) jax.grad on ap.* ops -------------------------------------------------------------------

def f_ap(a: Any, b: Any) -> Any:
    """f written with ap.* ops: works on JAX arrays and tracers (and on graph tensors)."""
    return ap.add(ap.multiply(2.0, ap.multiply(a, ap.square(b))),
                  ap.multiply(3.0, ap.multiply(ap.square(a), b)))


def jax_grad(a: float, b: float) -> dict[str, float]:
    x, y = jnp.float32(a), jnp.float32(b)
    return {"f": float(f_ap(x, y)), "df_da": float(jax.grad(f_ap)(x, y)),
            "d2f_dadb": float(jax.grad(jax.grad(f_ap), argnums=1)(x, y))}


# --- all of it -----------------------------------------------------------------------------------

def compare(a: float = 2.0, b: float = 3.0, steps: Sequence[float] = DEFAULT_STEPS,
            swell_depth: int = 4) -> dict[str, Any]:
    return {"a": a, "b": b, "exact": exact(a, b), "numerical": numerical(a, b, steps),
            "symbolic": symbolic(a, b, swell_depth), "adplugin": graph_derivation(a, b),
            "jax_grad": jax_grad(a, b)}


def report(r: dict[str, Any], emit: Callable[[str], None] = print) -> None:
    ex = r["exact"]
    emit(f"f(a, b) = 2ab² + 3a²b at a={r['a']:g}, b={r['b']:g}")
    emit(f"exact (by hand): f = {ex['f']:g}, ∂f/∂a = 2b² + 6ab = {ex['df_da']:g}, "
         f"∂²f/∂a∂b = 4b + 6a = {ex['d2f_dadb']:g}")

    emit("\n(i) numerical differentiation, float64 (absolute errors)")
    emit(f"{'h':>8} {'forward ∂f/∂a':>15} {'central ∂f/∂a':>15} "
         f"{'forward ∂²f/∂a∂b':>18} {'central ∂²f/∂a∂b':>18}")
    for row in r["numerical"]["rows"]:
        emit(f"{row['h']:8.0e} {row['forward_error']:15.3e} {row['central_error']:15.3e} "
             f"{row['forward2_error']:18.3e} {row['central2_error']:18.3e}")
    best = r["numerical"]["best_h"]
    emit(f"best h: forward {best['forward']:.0e}, central {best['central']:.0e}, "
         f"nested forward {best['forward2']:.0e}, nested central {best['central2']:.0e}")
    emit("forward: truncation error ~ (h/2)·∂²f/∂a² falls with h until round-off ~ eps·|f|/h "
         "takes over;\ncentral: truncation ~ (h²/6)·∂³f/∂a³, which is 0 here (f is quadratic in "
         "a), so only round-off\nshows and it grows as h shrinks; second differences divide by h², "
         "so round-off grows faster.")

    emit("\n(ii) symbolic differentiation (SymPy)")
    s = r["symbolic"]
    if s is None:
        emit("skipped: SymPy is not installed (pip install sympy)")
    else:
        for k, label in (("f", "f"), ("df_da", "∂f/∂a"), ("d2f_dadb", "∂²f/∂a∂b")):
            emit(f"{label:>9} = {s['expressions'][k]:<22} = {s['values'][k]:g}   "
                 f"({s['count_ops'][k]} ops)")
        emit("expression swell, logistic map l_{k+1} = 4 l_k (1 - l_k), l_1 = x "
             "(ops: sympy.count_ops; adplugin: graph ops after simplify)")
        emit(f"{'depth':>5} {'ops l':>6} {'ops dl/dx':>10} {'simplified':>11} "
             f"{'ap ops l':>9} {'ap ops dl/dx':>13}")
        for w in s["swell"]:
            emit(f"{w['depth']:5d} {w['ops_f']:6d} {w['ops_diff']:10d} "
                 f"{w['ops_diff_simplified']:11d} {w['ap_ops_f']:9d} {w['ap_ops_gradient']:13d}")

    emit("\n(iii) adplugin graph derivation (ap.gradients twice, exact)")
    d = r["adplugin"]
    emit("values: " + ", ".join(f"{k} = {v:g}" for k, v in d["values"].items()))
    emit("gradient graph of ∂f/∂a (g.to_text([da])):")
    emit(d["text"])
    emit("after ap.simplify:")
    emit(d["text_simplified"])
    emit("ops needed (before -> after simplify): " + ", ".join(
        f"{k} {c['before']} -> {c['after']}" for k, c in d["op_count"].items()))

    emit("\n(iv) jax.grad on the function written with ap.* ops")
    emit("values: " + ", ".join(f"{k} = {v:g}" for k, v in r["jax_grad"].items()))
    agree = all(r["jax_grad"][k] == d["values"][k] == ex[k] for k in ex)
    emit(f"adplugin graph, jax.grad and the exact values agree: {agree}")


def write_dot(dot: str, path: str, emit: Callable[[str], None] = print) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dot)
    emit(f"\nwrote DOT of the gradient graph to {out}")
    if shutil.which("dot") is None:
        emit("(Graphviz `dot` not found: not rendered; e.g. apt-get install graphviz)")
        return
    svg = out.with_suffix(".svg")
    render(dot, str(svg))
    emit(f"rendered {svg}")


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    r = compare(F.a, F.b, [float(h) for h in F.steps], F.swell_depth)
    report(r)
    if F.dot:
        write_dot(r["adplugin"]["dot"], F.dot)
    if any(r["jax_grad"][k] != r["adplugin"]["values"][k] for k in r["exact"]):
        sys.exit("adplugin and jax.grad disagree")


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
