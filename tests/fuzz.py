"""Differential fuzzer: random programs of `ap.*` ops in every engine against `jax.numpy`.

Each program (drawn by `_fuzz_programs.generate`: 1-3 inputs, 5-40 ops, broadcasting,
reductions with axes, indexing, `where`, float32/float64) runs in four engines, and each check
is compared with `jax.numpy` + `jax.grad` on the same inputs:

- `jax.*`: the `ap.*` program under JAX: value and `jax.grad` (eager), `jax.jit` of both,
  a Hessian-vector product (`jax.jvp` of `jax.grad`), `jax.vmap` of value and gradient;
- `graph.*`: placeholders in an `ap.Graph` (of static shapes, or with unknown dims),
  `ap.gradients` (twice for the HVP), `ap.forward_gradients` (a directional derivative,
  `graph.jvp`), `Graph.run`;
- `trace.*`: `ap.trace` of the jnp program, then the same derivatives on its graph;
- `tape.*`: a `GradientTape` over variables, watched constants or watched arrays
  (`tape.grad`), and nested tapes (`tape.nested_grad`, `tape.hvp`).

Tolerances are relative to each result's scale, its largest entry (at least 0.01; float32:
2e-4, float64: 1e-10); where jnp's result is not finite only the finiteness pattern is compared
(NaN equals NaN).

    python -m tests.fuzz --n 2000 --seed 0      # from the repository root
    python -m tests.fuzz --n 100 --ops softmax,take,sum --checks graph.grad,tape.grad

prints a summary (programs, checks, disagreements by kind, what is not checked and why) and,
per kind, the first failing program minimised (dropping ops while it still fails): runnable
Python with both versions, and the `Program(...)` value that `check_program` replays.
`tests/test_fuzz.py` runs 200 drawn programs in CI and plants bugs the fuzzer must report.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tests/ helpers, under -m too

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _fuzz_programs import (  # noqa: E402
    ACTIVE,
    AP,
    JNP,
    MISSING,
    SPECS,
    Namespace,
    Program,
    RandomDraw,
    Shape,
    Step,
    generate,
    input_values,
    loss,
    programs,
    prune,
    source,
)

import adplugin as ap  # noqa: E402

__all__ = ["AP", "CHECKS", "DEFERRED_JVP", "GROUPS", "JNP", "MISSING", "NOT_CHECKED", "Failure",
           "Namespace", "Program", "Step", "check_program", "generate", "minimize", "mismatch",
           "programs", "report", "repro", "run", "source"]

CHECKS = ("jax.value", "jax.grad", "jax.jit", "jax.hvp", "jax.vmap",
          "graph.value", "graph.grad", "graph.jvp", "graph.hvp",
          "trace.value", "trace.grad", "trace.jvp", "trace.hvp",
          "tape.value", "tape.grad", "tape.nested_grad", "tape.hvp")
RTOL = {"float32": 2e-4, "float64": 1e-10}
SCALE_FLOOR = 1e-2
BATCH = 2


@dataclass(frozen=True)
class Failure:
    check: str   # one of CHECKS
    kind: str    # "<check>: wrong values" / "wrong shape" / ... / "error TypeError"
    detail: str


@dataclass(frozen=True)
class Data:
    """Concrete values for one program: inputs, HVP tangents, vmap batches and axes."""
    xs: list[np.ndarray]
    vs: list[np.ndarray]
    batched: list[np.ndarray]
    in_axes: tuple[int | None, ...]


def program_data(p: Program) -> Data:
    xs = input_values(p)
    rng = np.random.default_rng((p.seed, 2))
    vs = [rng.standard_normal(x.shape).astype(p.dtype) for x in xs]
    axes: list[int | None] = [0 if rng.integers(0, 3) else None for _ in xs]
    axes[int(rng.integers(0, len(xs)))] = 0  # at least one input is batched
    batched = [x if a is None else np.stack(
        [x, *(rng.standard_normal(x.shape).astype(p.dtype) for _ in range(BATCH - 1))])
        for x, a in zip(xs, axes)]
    return Data(xs, vs, batched, tuple(axes))


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

def _leaves(x: Any) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [leaf for item in x for leaf in _leaves(item)]
    return [x]


def mismatch(actual: Any, expected: Any, rtol: float) -> tuple[str, str] | None:
    """None when `actual` matches `expected` (jnp's), else (category, detail). Finite entries
    agree within rtol * (|expected| + scale); non-finite ones in pattern (NaN equals inf)."""
    got, want = _leaves(actual), _leaves(expected)
    if len(got) != len(want):
        return "wrong structure", f"{len(got)} results, jnp has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        a, e = np.asarray(g), np.asarray(w)
        at = f"result {i}: " if len(want) > 1 else ""
        if a.shape != e.shape:
            return "wrong shape", f"{at}shape {a.shape}, jnp {e.shape}"
        if a.dtype != e.dtype:
            return "wrong dtype", f"{at}dtype {a.dtype}, jnp {e.dtype}"
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        fa, fe = np.isfinite(a64), np.isfinite(e64)
        if (fa != fe).any():
            j = tuple(int(i) for i in np.argwhere(fa != fe)[0])
            return "non-finite pattern", f"{at}at {j}: {float(a64[j])}, jnp {float(e64[j])}"
        if not fe.any():
            continue
        # scale: the largest |entry|, at least SCALE_FLOOR (a gradient that is exactly zero
        # in math is rounding noise of O(1) terms, in jnp and in ap alike)
        scale = max(float(np.abs(e64[fe]).max()), SCALE_FLOOR)
        with np.errstate(invalid="ignore"):  # inf - inf where both are not finite
            err = np.abs(a64 - e64)
        bad = fe & (err > rtol * (np.abs(e64) + scale))
        if bad.any():
            j = tuple(int(i) for i in np.argwhere(bad)[0])
            worst = float(np.max(np.where(fe, err / (np.abs(e64) + scale), 0.0)))
            return "wrong values", (f"{at}at {j}: {float(a64[j])!r}, jnp {float(e64[j])!r} "
                                    f"(relative error {worst:.2g} of scale {scale:.3g}, "
                                    f"rtol {rtol:g})")
    return None


# ----------------------------------------------------------------------------------------------
# Engines: each returns {check: result or the exception it raised}
# ----------------------------------------------------------------------------------------------

Results = dict[str, Any]


def _attempt(results: Results, names: Sequence[str], thunk: Callable[[], Any]) -> Any:
    """thunk(); on an exception, record it for `names` (the checks it breaks) and return None."""
    try:
        return thunk()
    except Exception as e:  # every error is a finding, attributed to the checks it breaks
        for n in names:
            results.setdefault(n, e)
        return None


def _argnums(p: Program) -> tuple[int, ...]:
    return tuple(range(len(p.inputs)))


def _parts(p: Program, m: Any, d: Data) -> dict[str, Callable[..., Any]]:
    """The JAX-transformed computations (jit, hvp, vmap), as functions of (xs, vs, batched)."""
    def f(*xs: Any) -> Any:
        return loss(p, m, xs)

    n = _argnums(p)

    def hvp(xs: Any, vs: Any, batched: Any) -> Any:
        return jax.jvp(lambda *x: jax.grad(f, n)(*x), tuple(xs), tuple(vs))[1]

    return {"jit": lambda xs, vs, batched: jax.value_and_grad(f, n)(*xs),
            "jvp": lambda xs, vs, batched: jax.jvp(f, tuple(xs), tuple(vs))[1],
            "hvp": hvp,
            "vmap": lambda xs, vs, batched: jax.vmap(jax.value_and_grad(f, n),
                                                     in_axes=d.in_axes)(*batched)}


def _jit(parts: dict[str, Callable[..., Any]], d: Data) -> dict[str, Any]:
    # default XLA options: at xla_backend_optimization_level=0 XLA:CPU computes one expression
    # two ways in a program, so min/max gradients (an equality mask) came out as 1/0
    fn = jax.jit(lambda *a: {k: f(*a) for k, f in parts.items()})
    return dict(fn(d.xs, d.vs, d.batched))


def reference_and_jax(p: Program, m: Any, d: Data, wanted: Collection[str]
                      ) -> tuple[dict[str, Any], Results]:
    """jnp + jax.grad (everything the checks compare with) and the `jax.*` checks of the ap
    program: the jitted parts of both in one compile, the eager ones after it."""
    needed = {"jit"} | {k for k in ("jvp", "hvp", "vmap") if any(c.endswith(k) for c in wanted)}
    ref_parts = {f"ref.{k}": f for k, f in _parts(p, JNP, d).items() if k in needed}
    ap_parts = {f"jax.{k}": f for k, f in _parts(p, m, d).items() if f"jax.{k}" in wanted}
    r: Results = {}
    try:  # one compile for both; on an error, each part alone, to attribute it
        out = _jit({**ref_parts, **ap_parts}, d)
    except Exception:
        out = _jit(ref_parts, d)  # an error here is the generator's (jnp rejects the program)
        for k, fn in ap_parts.items():
            out[k] = _attempt(r, [k], functools.partial(_jit_one, k, fn, d))
    value, grad = out["ref.jit"]
    ref = {"value": value, "grad": grad, "nested_grad": grad, "jvp": out.get("ref.jvp"),
           "hvp": out.get("ref.hvp"), "jit": out["ref.jit"], "vmap": out.get("ref.vmap")}
    r.update({k: v for k, v in out.items() if k.startswith("jax.")})

    def f(*xs: Any) -> Any:
        return loss(p, m, xs)

    xs = [jnp.asarray(x) for x in d.xs]  # eager: ap ops on jax arrays
    if "jax.value" in wanted:
        r["jax.value"] = _attempt(r, ["jax.value"], lambda: f(*xs))
    if "jax.grad" in wanted:
        r["jax.grad"] = _attempt(r, ["jax.grad"], lambda: jax.grad(f, _argnums(p))(*xs))
    return ref, r


def _jit_one(name: str, fn: Callable[..., Any], d: Data) -> Any:
    return _jit({name: fn}, d)[name]


def _inner(grads: Sequence[Any], vs: Sequence[Any]) -> Any:
    """sum_i <grad_i, v_i>: its gradient is the Hessian-vector product."""
    total = None
    for g, v in zip(grads, vs):
        term = ap.sum(ap.multiply(g, v))
        total = term if total is None else ap.add(total, term)
    return total


def _derive_and_run(r: Results, engine: str, graph: Any, xs: list[Any], y: Any, d: Data,
                    wanted: Collection[str]) -> None:
    """ap.gradients on a graph (twice for the HVP), ap.forward_gradients (a directional
    derivative), then one Graph.run for all fetches."""
    names = [f"{engine}.{k}" for k in ("value", "grad", "jvp", "hvp")
             if f"{engine}.{k}" in wanted]
    fetches: dict[str, list[Any]] = {f"{engine}.value": [y]}
    if f"{engine}.jvp" in names:
        jvp = _attempt(r, [f"{engine}.jvp"], lambda: ap.forward_gradients(y, xs, d.vs))
        if jvp is not None:
            fetches[f"{engine}.jvp"] = jvp
    grad_names = [n for n in names if n.endswith(("grad", "hvp"))]
    grads = _attempt(r, grad_names, lambda: ap.gradients(y, xs, unconnected_gradients="zero"))
    if grads is not None:
        fetches[f"{engine}.grad"] = grads
        if f"{engine}.hvp" in names:
            def hvp() -> Any:
                with graph:
                    return ap.gradients(_inner(grads, d.vs), xs, unconnected_gradients="zero")
            hv = _attempt(r, [f"{engine}.hvp"], hvp)
            if hv is not None:
                fetches[f"{engine}.hvp"] = hv
    names = [n for n in names if n in fetches]
    feed = dict(zip(xs, d.xs))
    try:
        flat = graph.run([t for n in names for t in fetches[n]], feed)
        for n in names:
            values, flat = flat[:len(fetches[n])], flat[len(fetches[n]):]
            r[n] = values[0] if n.endswith(("value", "jvp")) else values
    except Exception:
        for n in names:
            r[n] = _attempt(r, [n], functools.partial(graph.run, fetches[n], feed))
            if n.endswith(("value", "jvp")) and isinstance(r[n], list):
                r[n] = r[n][0]


def placeholder_shape(p: Program, name: str, shape: Shape) -> tuple[int | None, ...] | None:
    """The placeholder's declared shape: static, or (graph_mode "deferred") with some dims
    None or the rank unknown, chosen by the seed; the graph is specialized when fed."""
    if p.graph_mode != "deferred":
        return shape
    rng = np.random.default_rng((p.seed, 3, int(name[1:])))
    if rng.integers(0, 4) == 0:
        return None  # unknown rank
    return tuple(None if rng.integers(0, 2) else n for n in shape)


def _forward_mode_on_deferred() -> bool:
    """Whether ap.forward_gradients accepts tensors of placeholders with unknown dims."""
    g = ap.Graph()
    with g:
        x = ap.placeholder((None,), np.float32)
        try:
            ap.forward_gradients(ap.sum(x), [x], [np.ones(1, np.float32)])
            return True
        except Exception:
            return False


DEFERRED_JVP = _forward_mode_on_deferred()
NOT_CHECKED = [] if DEFERRED_JVP else [
    "graph.jvp on deferred placeholders (ap.forward_gradients refuses DeferredTensor)"]


def not_checked(p: Program) -> set[str]:
    """Checks left out for this program, by design (listed in NOT_CHECKED)."""
    return {"graph.jvp"} if p.graph_mode == "deferred" and not DEFERRED_JVP else set()


def graph_engine(p: Program, m: Any, d: Data, wanted: Collection[str]) -> Results:
    r: Results = {}
    wanted = set(wanted) - not_checked(p)

    def build() -> Any:
        g = ap.Graph()
        with g:
            xs = [ap.placeholder(placeholder_shape(p, name, shape), x.dtype, name)
                  for (name, shape), x in zip(p.inputs, d.xs)]
            return g, xs, loss(p, m, xs)

    built = _attempt(r, [c for c in wanted if c.startswith("graph.")], build)
    if built is not None:
        g, xs, y = built
        _derive_and_run(r, "graph", g, xs, y, d, wanted)
    return r


def trace_engine(p: Program, m: Any, d: Data, wanted: Collection[str]) -> Results:
    r: Results = {}
    traced = _attempt(r, [c for c in wanted if c.startswith("trace.")],
                      lambda: ap.trace(lambda *xs: loss(p, JNP, xs), *d.xs))
    if traced is not None:
        _derive_and_run(r, "trace", traced.graph, traced.inputs, traced.outputs[0], d, wanted)
    return r


def _operator_on_arrays(p: Program) -> bool:
    """Whether a Python operator applies to inputs and constants only, or has an input as its
    left operand: on a watched jax.Array it is jax's operator, which no tape sees (and which
    refuses a recorded right operand with a clear error). Not a bug: such programs use watched
    ap.constant(x) sources instead."""
    inputs = {n for n, _ in p.inputs}
    raw = inputs | {n for n, _ in p.consts}
    return any(not SPECS[s.op].template.startswith("m.") and
               (set(s.args) <= raw or s.args[0] in inputs) for s in p.steps)


def _tape_mode(p: Program) -> str:
    return "constants" if p.tape_mode == "arrays" and _operator_on_arrays(p) else p.tape_mode


def _sources(p: Program, d: Data) -> list[Any]:
    mode = _tape_mode(p)
    if mode == "variables":
        return [ap.Variable(x) for x in d.xs]
    return [ap.constant(x) if mode == "constants" else jnp.asarray(x) for x in d.xs]


def tape_engine(p: Program, m: Any, d: Data, wanted: Collection[str]) -> Results:
    r: Results = {}
    if {"tape.value", "tape.grad"} & set(wanted):  # one tape: a compiled gradient program
        def single() -> Any:
            xs = _sources(p, d)
            with ap.GradientTape() as tape:
                tape.watch(xs)
                y = loss(p, m, xs)
            r["tape.value"] = _attempt(r, ["tape.value"], lambda: np.asarray(y))
            if "tape.grad" in wanted:
                r["tape.grad"] = _attempt(r, ["tape.grad"], lambda: [np.asarray(g) for g in (
                    tape.gradient(y, xs, unconnected_gradients="zero"))])
        _attempt(r, ["tape.value", "tape.grad"], single)
    if {"tape.nested_grad", "tape.hvp"} & set(wanted):  # nested: symbolic inner gradients
        def nested() -> Any:
            xs = _sources(p, d)
            with ap.GradientTape(persistent=True) as outer:
                outer.watch(xs)
                with ap.GradientTape() as inner:
                    inner.watch(xs)
                    y = loss(p, m, xs)
                grads = inner.gradient(y, xs, unconnected_gradients="zero")
                gv = _inner(grads, d.vs)
            r["tape.nested_grad"] = _attempt(r, ["tape.nested_grad"],
                                             lambda: [np.asarray(g) for g in grads])
            r["tape.hvp"] = _attempt(r, ["tape.hvp"], lambda: [np.asarray(h) for h in (
                outer.gradient(gv, xs, unconnected_gradients="zero"))])
        _attempt(r, ["tape.nested_grad", "tape.hvp"], nested)
    return r


ENGINES = {"graph": graph_engine, "trace": trace_engine, "tape": tape_engine}
GROUPS = {e: tuple(c for c in CHECKS if c.startswith(e + ".")) for e in ("jax", *ENGINES)}


# ----------------------------------------------------------------------------------------------
# Checking, minimising, the command line
# ----------------------------------------------------------------------------------------------

def check_program(p: Program, m: Namespace = AP, only: Collection[str] | None = None
                  ) -> list[Failure]:
    """Run `p` in every engine (with namespace `m` for the ap side; `only`: some checks) and
    return its disagreements with jnp + jax.grad."""
    wanted = set(CHECKS if only is None else only) - not_checked(p)
    with jax.enable_x64(p.dtype == "float64"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = program_data(p)
        try:
            ref, results = reference_and_jax(p, m, d, wanted)
        except Exception as e:  # a program jnp rejects: the generator's bug, not adplugin's
            return [Failure("reference", f"reference: error {type(e).__name__}", _short(e))]
        for engine, run_engine in ENGINES.items():
            if any(c.startswith(engine + ".") for c in wanted):
                results.update(run_engine(p, m, d, wanted))
        rtol = RTOL["float32" if p.lowered_precision else "float64"]
        failures = []
        for check in sorted(wanted, key=CHECKS.index):
            if check not in results:  # the fuzzer's own bug: an engine skipped a check
                failures.append(Failure(check, f"{check}: not run", "no result"))
                continue
            got = results[check]
            if isinstance(got, Exception):
                failures.append(Failure(check, f"{check}: error {type(got).__name__}",
                                        _short(got)))
                continue
            key = check.split(".")[1]
            bad = mismatch(got, ref[key], rtol)
            if bad is not None and (_not_finite(ref[key]) or _not_finite(got)) and mismatch(
                    got, _eager_reference(p, d, key), rtol) is None:
                bad = None  # where NaNs arise, jnp's jit and eager may differ (XLA simplifies
                # x - x to 0 even for NaN x, and inf * 0 where a factor is known 0): the
                # eager jnp result counts as well, whichever side has the NaN
            if bad is not None and bad[0] == "wrong values":
                # an ill-conditioned program: jnp's own jit and eager runs differ by `spread`
                # (rounding amplified), so a result is held to CONDITIONING times that
                spread = relative_spread(ref[key], _eager_reference(p, d, key))
                if spread > rtol and mismatch(got, ref[key], CONDITIONING * spread) is None:
                    bad = None
            if bad is not None:
                failures.append(Failure(check, f"{check}: {bad[0]}", bad[1]))
    return failures


CONDITIONING = 20  # how far past jnp's own jit-vs-eager spread a result may be


def relative_spread(a: Any, b: Any) -> float:
    """The largest |a - b| / (|b| + scale) over finite entries (mismatch's error measure)."""
    worst = 0.0
    for x, y in zip(_leaves(a), _leaves(b)):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        fin = np.isfinite(x64) & np.isfinite(y64)
        if x64.shape != y64.shape or not fin.any():
            continue
        scale = max(float(np.abs(y64[fin]).max()), SCALE_FLOOR)
        worst = max(worst, float(np.max(np.abs(x64 - y64)[fin] / (np.abs(y64[fin]) + scale))))
    return worst


def _not_finite(x: Any) -> bool:
    """Whether a numeric result holds a NaN or an infinity (a non-numeric one: False)."""
    try:
        return any(not np.isfinite(np.asarray(leaf)).all() for leaf in _leaves(x))
    except TypeError:
        return False


def _eager_reference(p: Program, d: Data, key: str) -> Any:
    """The jnp reference for `key` run eagerly (no jit)."""
    if key in ("value", "grad", "nested_grad"):
        value, grad = _parts(p, JNP, d)["jit"](d.xs, d.vs, d.batched)
        return value if key == "value" else grad
    return _parts(p, JNP, d)[key](d.xs, d.vs, d.batched)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def _shapes(p: Program) -> dict[str, Any]:
    """Every value's shape and dtype, from the jnp program."""
    with jax.enable_x64(p.dtype == "float64"):
        env: dict[str, Any] = {}

        def run(*xs: Any) -> Any:
            from _fuzz_programs import _compiled, const_values

            vals: dict[str, Any] = dict(zip((n for n, _ in p.inputs), xs))
            vals.update(const_values(p))
            for s in p.steps:
                vals[s.out] = _compiled(s.expr)(JNP, *(vals[a] for a in s.args))
            return {k: v for k, v in vals.items() if k[0] != "k"}

        args = [jax.ShapeDtypeStruct(s, p.dtype) for _, s in p.inputs]
        env = jax.eval_shape(run, *args)
    return {k: (v.shape, v.dtype) for k, v in env.items()}


def _candidates(p: Program) -> list[Program]:
    """Smaller programs, biggest cuts first: one output; an output moved up to an operand;
    no weight; a step's uses replaced by an operand (or input) of the same shape and dtype."""
    out: list[Program] = []
    step_of = {s.out: s for s in p.steps}
    if len(p.outputs) > 1:
        out += [replace(p, outputs=(o,), weight=None) for o in p.outputs]
    for o in p.outputs:
        up = [a for a in step_of[o].args if a in step_of and a not in p.outputs]
        out += [replace(p, outputs=tuple(a if x == o else x for x in p.outputs), weight=None)
                for a in up]
    if p.weight is not None:
        out.append(replace(p, weight=None))
    shapes = _shapes(p)
    for s in reversed(p.steps):
        same = [a for a in (*s.args, *(n for n, _ in p.inputs))
                if a in shapes and a != s.out and shapes[a] == shapes[s.out]]
        for a in dict.fromkeys(same):
            renamed = {s.out: a}
            steps = tuple(replace(t, args=tuple(renamed.get(x, x) for x in t.args))
                          for t in p.steps)
            out.append(replace(p, steps=steps,
                               outputs=tuple(renamed.get(x, x) for x in p.outputs)))
    return [prune(q) for q in out if q.steps and all(o in {s.out for s in q.steps}
                                                    for o in q.outputs)]


def minimize(p: Program, failure: Failure, m: Namespace = AP, budget_s: float = 60.0
             ) -> Program:
    """Drop ops while the program still fails with `failure.kind` (at most `budget_s`)."""
    deadline = time.monotonic() + budget_s

    def fails(q: Program) -> bool:
        found = check_program(q, m, only={failure.check})
        return any(f.kind == failure.kind for f in found)

    p = prune(p)
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for q in _candidates(p):
            if time.monotonic() >= deadline:
                break
            smaller = len(q.steps) < len(p.steps) or (p.weight and not q.weight)
            if smaller and fails(q):
                p, improved = q, True
                break
    return p


REPRO_HEADER = """\
import operator
import jax, jax.numpy as jnp, numpy as np  # run from tests/ (or put it on sys.path)
import adplugin as ap
from _fuzz_programs import ap_getitem, arg, const  # x[key] with ap's primitives"""


def repro(p: Program) -> str:
    """Runnable Python: both versions of the program and a call of each on its inputs."""
    inputs = [f"{n} = arg({p.seed}, {n!r}, {s}, {p.dtype!r})" for n, s in p.inputs]
    names = ", ".join(n for n, _ in p.inputs)
    return "\n".join([REPRO_HEADER, source(p, AP), source(p, JNP), *inputs,
                      f"print(loss_ap({names}), loss_jnp({names}))"])


def report(p: Program, failures: Sequence[Failure]) -> str:
    """The failures, the runnable repro (under jax.enable_x64 for float64 programs) and the
    `Program(...)` value (`check_program(Program(...))` replays it)."""
    lines = [f"{f.kind}: {f.detail}" for f in failures]
    if p.dtype == "float64":
        lines.append("# float64: run with JAX_ENABLE_X64=1")
    engines = {f.check.split(".")[0] for f in failures}
    if "graph" in engines:
        lines += [f"# graph: {n} = ap.placeholder({placeholder_shape(p, n, s)}, {p.dtype!r})"
                  for n, s in p.inputs]
    if "tape" in engines:
        mode = _tape_mode(p)
        lines.append("# tape: sources " + {
            "variables": "ap.Variable(x)", "constants": "ap.constant(x), watched",
            "arrays": "jnp.asarray(x), watched"}[mode])
    return "\n".join([*lines, repro(p), f"# replay: {p!r}"])


def run(n: int, seed: int = 0, min_steps: int = 5, max_steps: int = 40,
        checks: Collection[str] | None = None, budget_s: float = 60.0,
        out: Any = sys.stdout, ops: Collection[str] | None = None) -> dict[str, int]:
    """Fuzz `n` programs (seeds seed..seed+n-1); print the summary and each kind's first
    failing program, minimised. Returns the count of failing programs per kind."""
    start = time.monotonic()
    table = None if ops is None else {k: ACTIVE[k] for k in ops}
    by_kind: Counter[str] = Counter()
    first: dict[str, tuple[Program, Failure]] = {}
    steps = failing = 0
    for i in range(n):
        p = generate(RandomDraw(seed + i), seed + i, min_steps, max_steps, ops=table)
        steps += len(p.steps)
        failures = check_program(p, only=checks)
        failing += bool(failures)
        for f in failures:
            by_kind[f.kind] += 1
            if f.kind not in first:
                first[f.kind] = (p, f)
                print(f"[{i + 1}/{n}] new: {f.kind} (seed {p.seed}): {f.detail}",
                      file=sys.stderr, flush=True)
        if (i + 1) % 20 == 0:  # executables of one-off shapes: ~25 MB a program otherwise
            jax.clear_caches()
        if (i + 1) % 50 == 0:
            print(f"[{i + 1}/{n}] {time.monotonic() - start:.0f}s, {failing} failing",
                  file=sys.stderr, flush=True)
    n_checks = n * len(checks if checks is not None else CHECKS)
    print(f"programs: {n} (seeds {seed}..{seed + n - 1}, {steps / max(n, 1):.1f} ops on "
          f"average), checks: {n_checks}, failing programs: {failing}, "
          f"{time.monotonic() - start:.0f}s", file=out)
    if MISSING:
        print(f"ops not in adplugin (left out): {', '.join(MISSING)}", file=out)
    for note in NOT_CHECKED:
        print(f"not checked: {note}", file=out)
    for kind, count in by_kind.most_common():
        print(f"  {count:5d}  {kind}", file=out)
    for kind, (p, f) in first.items():
        small = minimize(p, f, budget_s=budget_s) if budget_s > 0 else p
        found = [g for g in check_program(small, only={f.check}) if g.kind == kind] or [f]
        print(f"\n=== {kind} (seed {p.seed}, {len(p.steps)} ops, minimised to "
              f"{len(small.steps)})\n{report(small, found)}", file=out, flush=True)
    return dict(by_kind)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="programs to run (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--min-steps", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--checks", default=None,
                        help=f"comma-separated subset of: {', '.join(CHECKS)}")
    parser.add_argument("--ops", default=None,
                        help="comma-separated ops of the table to draw from (default: all)")
    parser.add_argument("--minimize-budget", type=float, default=60.0,
                        help="seconds to minimise each kind's first failure (0: do not)")
    args = parser.parse_args(argv)
    checks = None if args.checks is None else [c.strip() for c in args.checks.split(",")]
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    ops = None if args.ops is None else [o.strip() for o in args.ops.split(",")]
    if sorted(set(ops or ()) - set(ACTIVE)):
        parser.error(f"unknown ops {sorted(set(ops or ()) - set(ACTIVE))}; choose from "
                     f"{', '.join(sorted(ACTIVE))}")
    found = run(args.n, args.seed, args.min_steps, args.max_steps, checks, args.minimize_budget,
                ops=ops)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
