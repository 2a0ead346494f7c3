"""Pipelines across devices: static schedules (GPipe, 1F1B) checked before running, and
`Pipeline` training with microbatches, against `jax.value_and_grad` of the unsplit model.

Runs on the 8 host CPU devices tests/conftest.py forces; the same programs run on one device.
"""

from __future__ import annotations

import re
import subprocess
import sys
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _examples import EXAMPLES, ROOT, load_example

import adplugin as ap
from adplugin.placement.pipeline import Pipeline, PipelineError
from adplugin.placement.schedule import (
    B,
    F,
    Schedule,
    ScheduleError,
    gpipe,
    make_schedule,
    one_f_one_b,
)

BUILDERS = {"gpipe": gpipe, "1f1b": one_f_one_b}

# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("p", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 11])
def test_builders_match_the_formulas(name: str, p: int, m: int) -> None:
    s = BUILDERS[name](p, m)
    assert (s.num_stages, s.num_microbatches) == (p, m)
    assert s.num_steps == 2 * (m + p - 1)
    assert s.bubble == Fraction(p - 1, m + p - 1)
    assert s.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))
    # the bubble counted from the cells themselves
    idle = sum(a is None for row in s.table for a in row)
    assert Fraction(idle, s.num_steps * p) == s.bubble
    assert s.num_transfers == 2 * (p - 1) * m
    # each action exactly once per stage
    for stage in range(p):
        got = sorted((a.kind, a.microbatch) for _, a in s.actions(stage))
        assert got == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
    # GPipe keeps every microbatch live; 1F1B at most p - s on stage s
    want_peak = [m] * p if name == "gpipe" else [min(p - st, m) for st in range(p)]
    assert s.peak_in_flight() == want_peak


def test_transfers_go_between_neighbours_after_their_action() -> None:
    s = one_f_one_b(3, 4)
    for tr in s.transfers():
        a = s.table[tr.step][tr.src]
        assert a is not None and a.microbatch == tr.microbatch
        if tr.kind == "activation":
            assert a.kind == "F" and tr.dst == tr.src + 1
            # the receiving forward runs at a later step
            (t_recv,) = [t for t, b in s.actions(tr.dst) if b == F(tr.microbatch)]
        else:
            assert a.kind == "B" and tr.dst == tr.src - 1
            (t_recv,) = [t for t, b in s.actions(tr.dst) if b == B(tr.microbatch)]
        assert t_recv > tr.step


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_timeline_prints_the_table(name: str) -> None:
    s = BUILDERS[name](4, 8)
    lines = s.timeline().splitlines()
    assert lines[0].split()[1:] == [str(t) for t in range(s.num_steps)]
    # parse the grid back: it is the table
    parsed = []
    for stage, line in enumerate(lines[1:5]):
        cells = line.split()
        assert cells[:2] == ["stage", str(stage)]
        parsed.append(cells[2:])
    for t, row in enumerate(s.table):
        assert [parsed[st][t] for st in range(4)] == [str(a) if a else "." for a in row]
    assert "bubble 3/11 = 27.3%" in lines[-1] and "48 transfers" in lines[-1]
    assert str(s) == s.timeline()


# --- the checker catches every broken rule ------------------------------------------------------

VALID_2x1 = [[F(0), None], [None, F(0)], [None, B(0)], [B(0), None]]


def _broken(rows, m=1, limit=None):
    return Schedule("planted", len(rows[0]) if rows else 2, m, rows, limit)


def test_the_hand_written_table_is_valid() -> None:
    s = _broken(VALID_2x1)
    assert s.num_transfers == 2 and s.bubble == Fraction(1, 2)


@pytest.mark.parametrize("rows,m,step,stage,rule", [
    # F0 on stage 1 in the same step as on stage 0: the activation is not there yet
    ([[F(0), F(0)], [None, B(0)], [B(0), None]], 1, 0, 1, "activation of the stage before"),
    # B0 before F0 on the last stage
    ([[F(0), None], [None, B(0)], [None, F(0)], [B(0), None]], 1, 1, 1,
     "a forward precedes its backward"),
    # B0 on stage 0 together with B0 on stage 1: the cotangent is not there yet
    ([[F(0), None], [None, F(0)], [B(0), B(0)]], 1, 2, 0, "cotangent of the stage after"),
    # an action twice
    (VALID_2x1 + [[F(0), None]], 1, 4, 0, "exactly once"),
    # an action missing (reported past the last step)
    (VALID_2x1[:3], 1, 3, 0, "B0 never runs"),
    # a microbatch that does not exist
    ([[F(1), None]] + VALID_2x1, 1, 0, 0, "microbatches 0..m-1"),
    # a row of the wrong width
    ([[F(0), None], [None, F(0), None]], 1, 1, 3, "one cell per stage"),
    # something else than an action in a cell
    ([["F0", None]], 1, 0, 0, "F(i), B(i) or None"),
])
def test_checker_names_step_stage_and_rule(rows, m, step, stage, rule) -> None:
    with pytest.raises(ScheduleError) as e:
        _broken(rows, m)
    msg = str(e.value)
    assert f"step {step}, stage {stage}:" in msg and rule in msg and "Fix:" in msg


def test_checker_enforces_the_1f1b_in_flight_limit() -> None:
    g, f = gpipe(4, 8), one_f_one_b(4, 8)
    # GPipe's table under 1F1B's memory bound: stage 0 has 5 live microbatches at step 4
    with pytest.raises(ScheduleError, match=r"step 4, stage 0: 5 microbatches are in flight "
                                            r".* at most 4 .*in-flight limit"):
        Schedule("gpipe-as-1f1b", 4, 8, g.table, f.in_flight_limit)
    Schedule("1f1b-again", 4, 8, f.table, f.in_flight_limit)  # its own table passes


def test_a_pipeline_checks_its_schedule_before_running() -> None:
    s = gpipe(2, 1)
    object.__setattr__(s, "table", ((F(0), F(0)), (None, B(0)), (B(0), None)))  # tampered
    with pytest.raises(ScheduleError, match=r"step 0, stage 1: F0 runs before F0 on stage 0"):
        Pipeline([ap_stage, ap_stage], mse, microbatches=1, schedule=s)


def test_deadlocking_orders_are_rejected_before_running() -> None:
    # stage 0 wants B0 first, which waits on stage 1's B0, which waits on F0 of stage 0
    with pytest.raises(ScheduleError, match=r"deadlock.*no cyclic waits"):
        Schedule.from_orders("cycle", [[B(0), F(0)], [F(0), B(0)]], 1)


def test_builders_reject_bad_sizes() -> None:
    with pytest.raises(ScheduleError, match=r"ap.gpipe: p \(stages\) = 0; expected an int"):
        gpipe(0, 4)
    with pytest.raises(ScheduleError, match=r"m \(microbatches\) = 2.5"):
        one_f_one_b(2, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match=r"unknown pipeline schedule 'zigzag'"):
        make_schedule("zigzag", 2, 2)
    assert make_schedule("1F1B", 3, 2).table == one_f_one_b(3, 2).table


# ----------------------------------------------------------------------------------------------
# Pipeline runs equal jax.value_and_grad of the unsplit model
# ----------------------------------------------------------------------------------------------

WIDTH = 6


def ap_stage(params, x):
    """A layer in ap.* ops."""
    return ap.tanh(ap.add(ap.matmul(x, params["w"]), params["b"]))


def jnp_stage(params, x):
    """A layer in jnp, with a residual connection."""
    return x + jax.nn.softplus(x @ params["w"]) * params["b"]


def mse(y, t):
    return jnp.mean((y - t) ** 2)


def _model(p, seed=0, n=32):
    rng = np.random.default_rng(seed)
    fns = [ap_stage if s % 2 == 0 else jnp_stage for s in range(p)]
    params = [{"w": (rng.normal(size=(WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32),
               "b": rng.normal(size=WIDTH).astype(np.float32)} for _ in range(p)]
    x = rng.normal(size=(n, WIDTH)).astype(np.float32)
    y = rng.normal(size=(n, WIDTH)).astype(np.float32)
    return fns, params, x, y


def _reference(fns, loss, params, x, y):
    def full(ps):
        h = x
        for f, q in zip(fns, ps):
            h = f(q, h)
        return loss(h, y)
    return jax.value_and_grad(full)(params)


def _assert_close_trees(got, want, rtol=1e-5, atol=1e-6):
    got_l, want_l = jax.tree.leaves(got), jax.tree.leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(got_l, want_l):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("remat", [False, True], ids=["residuals", "remat"])
@pytest.mark.parametrize("p,m", [(4, 8), (8, 4), (3, 1), (1, 4)])
def test_gradients_equal_jax_grad(schedule, remat, p, m) -> None:
    fns, params, x, y = _model(p)
    pipe = Pipeline(fns, mse, microbatches=m, schedule=schedule, remat=remat)
    r = pipe.run(params, x, y)
    want_loss, want_grads = _reference(fns, mse, params, x, y)
    np.testing.assert_allclose(float(r.loss), float(want_loss), rtol=1e-6)
    _assert_close_trees(r.grads, want_grads)
    devs = jax.devices()
    assert pipe.devices == devs[:p]
    for s, g in enumerate(r.grads):  # every stage's gradient stays on its stage's device
        assert all(leaf.devices() == {devs[s]} for leaf in jax.tree.leaves(g))
    assert r.loss.devices() == {devs[p - 1]}
    assert r.transfers == 2 * (p - 1) * m == pipe.schedule.num_transfers
    assert r.cross_device_transfers == r.transfers and r.actions == 2 * p * m


def test_sum_reduction_matches_a_summed_loss() -> None:
    def sse(h, t):
        return jnp.sum((h - t) ** 2)
    fns, params, x, y = _model(3)
    pipe = Pipeline(fns, sse, microbatches=4, schedule="1f1b", loss_reduction="sum")
    loss, grads = pipe.value_and_grad(params, x, y)
    want_loss, want_grads = _reference(fns, sse, params, x, y)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    _assert_close_trees(grads, want_grads, atol=1e-5)
    # a mean over microbatches is a different loss: m times smaller
    mean_loss, _ = Pipeline(fns, sse, microbatches=4).value_and_grad(params, x, y)
    np.testing.assert_allclose(4 * float(mean_loss), float(want_loss), rtol=1e-6)


def test_integer_ids_into_the_first_stage_and_pytree_activations() -> None:
    """Stage 0 takes integer ids (no cotangent for them); stages pass a (h, skip) pair."""
    rng = np.random.default_rng(1)
    table = rng.normal(size=(20, WIDTH)).astype(np.float32)
    w = rng.normal(size=(WIDTH, WIDTH)).astype(np.float32)

    def embed(ps, ids):
        e = ap.take(ps["table"], ids, axis=0)
        return e, ap.sum(e, axis=1)

    def mix(ps, hs):
        h, skip = hs
        return ap.tanh(ap.matmul(h, ps["w"])) + skip[:, None]

    def loss(h, t):
        return jnp.mean((jnp.sum(h, axis=1) - t) ** 2)

    ids = rng.integers(0, 20, size=16).astype(np.int32)
    t = rng.normal(size=16).astype(np.float32)
    params = [{"table": table}, {"w": w}]
    for schedule in ("gpipe", "1f1b"):
        got_loss, got = Pipeline([embed, mix], loss, microbatches=4,
                                 schedule=schedule).value_and_grad(params, ids, t)
        want_loss, want = _reference([embed, mix], loss, params, ids, t)
        np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
        _assert_close_trees(got, want)


def test_the_same_program_runs_on_one_device() -> None:
    fns, params, x, y = _model(4)
    d0 = jax.devices()[0]
    spread = Pipeline(fns, mse, microbatches=8, schedule="1f1b").run(params, x, y)
    for devices in (d0, [d0]):
        assert Pipeline(fns, mse, microbatches=8, devices=devices).devices == [d0] * 4
    one = Pipeline(fns, mse, microbatches=8, schedule="1f1b", devices=[d0] * 4).run(params, x, y)
    assert one.transfers == 2 * 3 * 8 and one.cross_device_transfers == 0
    # the same programs on one device: the same numbers
    np.testing.assert_array_equal(np.asarray(one.loss), np.asarray(spread.loss))
    for a, b in zip(jax.tree.leaves(one.grads), jax.tree.leaves(spread.grads)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.devices() == {d0}


def test_default_devices_share_in_contiguous_blocks_when_there_are_fewer() -> None:
    devs = jax.devices()
    n = len(devs)
    fns = [ap_stage] * (2 * n)
    pipe = Pipeline(fns, mse, microbatches=1)
    assert pipe.devices == [devs[s // 2] for s in range(2 * n)]


def _counted(counts: list[int], s: int):
    """ap_stage, counting its traces in counts[s]."""
    def stage(ps, h):
        counts[s] += 1
        return ap_stage(ps, h)
    return stage


def test_each_stage_compiles_once() -> None:
    """The stage functions are traced once (residuals kept) or twice (forward recomputed in
    the backward), however many microbatches and steps run."""
    for remat, traces in ((False, 1), (True, 2)):
        counts = [0, 0, 0]
        _, params, x, y = _model(3)
        pipe = Pipeline([_counted(counts, s) for s in range(3)], mse, microbatches=4,
                        remat=remat)
        placed = pipe.place(params)
        for _ in range(3):
            pipe.run(placed, x, y)
        assert counts == [traces] * 3, (remat, counts)


def test_forward_is_the_unsplit_model() -> None:
    fns, params, x, _ = _model(4)
    pipe = Pipeline(fns, mse, microbatches=4)
    got = pipe.forward(params, x)
    want = pipe.unsplit()(params, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert got.devices() == {jax.devices()[3]}


def test_place_puts_each_stage_on_its_device() -> None:
    fns, params, _, _ = _model(3)
    pipe = Pipeline(fns, mse, microbatches=2, devices=jax.devices()[5:8])
    placed = pipe.place(params)
    for s, ps in enumerate(placed):
        assert all(a.devices() == {jax.devices()[5 + s]} for a in jax.tree.leaves(ps))


# --- errors name what was given, what was expected and the fix ----------------------------------

def _expect(fn, *patterns):
    with pytest.raises(PipelineError) as e:
        fn()
    msg = str(e.value)
    assert msg.startswith("ap.Pipeline:") and "Given:" in msg and "Fix:" in msg
    for pat in patterns:
        assert re.search(pat, msg), (pat, msg)


def test_bad_inputs_get_clear_errors() -> None:
    fns, params, x, y = _model(3)
    pipe = Pipeline(fns, mse, microbatches=4)
    _expect(lambda: pipe.run(params[:2], x, y), "one pytree per stage", "2 entries")
    _expect(lambda: pipe.run(params, x[:30], y[:30]), "30 rows does not split into 4",
            "drop 2 rows")
    _expect(lambda: pipe.run(params, x, y[:16]), "differ in their number of rows",
            "32 rows of batch, 16 of targets")
    _expect(lambda: pipe.run(params, (x, x[:8]), y), "batch needs the same leading")
    _expect(lambda: Pipeline(fns, lambda h, t: (h - t) ** 2, microbatches=4).run(params, x, y),
            "real scalar", r"shape \(8, 6\)")
    _expect(lambda: Pipeline([ap_stage, lambda ps, h: (h > 0).astype(jnp.int32), ap_stage],
                             mse, microbatches=4).run(params, x, y),
            "stage 1 returned a non-float activation", "int32")
    _expect(lambda: Pipeline(fns, mse, microbatches=4, schedule=gpipe(3, 2)),
            "does not fit", "3 stages and 2 microbatches")
    _expect(lambda: Pipeline(fns, mse, microbatches=4, devices=jax.devices()[:2]),
            "one device per stage")
    _expect(lambda: Pipeline(fns, mse, microbatches=0), "positive int")
    _expect(lambda: Pipeline(fns, mse, microbatches=2, loss_reduction="max"),  # type: ignore
            "loss_reduction")
    with pytest.raises(ScheduleError, match="unknown pipeline schedule"):
        Pipeline(fns, mse, microbatches=2, schedule="interleaved")


# ----------------------------------------------------------------------------------------------
# The example: MovieLens ratings, trained with optax across stages
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_parallel():
    return load_example("pipeline_parallel")


def test_example_trains_on_movielens(pipeline_parallel) -> None:
    data = pipeline_parallel.load_ratings(pipeline_parallel.movielens.DEFAULT_ML_LATEST_SMALL)
    assert len(data["train_y"]) + len(data["test_y"]) == 100836
    lines: list[str] = []
    out = pipeline_parallel.train(data, stages=4, microbatches=4, schedule="gpipe", steps=40,
                                  batch=256, emit=lines.append)
    assert out["grad_rel_error"] < 1e-5
    assert out["transfers"] == 2 * 3 * 4
    assert out["last_loss"] < 0.95 * out["first_loss"]
    assert out["test_after"] < out["test_before"]
    assert any("bubble 3/7" in line for line in lines)
    assert all(np.isfinite(out["losses"]))


def test_example_script_on_one_device() -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "pipeline_parallel.py"), "--small",
                           "--schedule", "1f1b", "--num_devices", "1"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "1 cpu device(s)" in out and "devices=[0:cpu:0, 1:cpu:0, 2:cpu:0, 3:cpu:0]" in out
    assert "1f1b: 4 stages, 8 microbatches, 22 steps, bubble 3/11" in out
    rel = float(re.search(r"max \|jax.grad\| = (\S+)", out).group(1))
    assert rel < 1e-5
    first, last = map(float, re.search(r"training loss: (\S+) .* -> (\S+)", out).groups())
    assert last < first
    assert "48 transfers per step" in out
