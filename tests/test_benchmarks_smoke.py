"""benchmarks/derivation.py runs (--quick) and writes the JSON it promises."""

from __future__ import annotations

from pathlib import Path

import pytest
from _benchmark_runner import run_quick

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_quick("derivation.py", tmp_path_factory.mktemp("bench"), timeout=240)


def test_json_keys(report):
    assert {"meta", "config", "check", "rows", "ratio_ap_over_jax", "scaling", "goals",
            "peers", "swell"} <= report.keys()
    assert report["config"]["quick"] is True
    row_keys = {"n", "ap_gradients_s", "ap_build_s", "ap_simplify_s",
                "derivative_nodes_per_forward_node", "jax_grad_jaxpr_s", "jax_trace_s",
                "ratio_ap_over_jax"}
    for row in report["rows"]:
        assert row_keys <= row.keys()
        assert row["ap_gradients_s"] > 0 and row["jax_grad_jaxpr_s"] > 0
    assert {r["n"] for r in report["rows"]} == {int(n) for n in report["ratio_ap_over_jax"]}
    assert {"from_n", "to_n", "ap_time_ratio"} <= report["scaling"].keys()
    assert len(report["goals"]) == 3
    for goal in report["goals"]:
        assert {"goal", "value", "target", "passed"} <= goal.keys()
    assert {"jax", "tensorflow", "sympy"} <= report["peers"].keys()


def test_derivative_value_checked_against_jax(report):
    check = report["check"]
    assert check["ok"] is True and check["x"] == 0.7
    assert check["adplugin"] == pytest.approx(check["jax_grad"], rel=1e-5)
    assert check["adplugin_simplified"] == pytest.approx(check["jax_grad"], rel=1e-5)


def test_value_check_agrees_with_jax_here():
    """The same check, in this process, independently of the script's own assertion."""
    import jax
    import jax.numpy as jnp

    import adplugin as ap

    n = 12
    with ap.Graph() as g:
        x = ap.placeholder((), name="x")
        y = x
        for i in range(n):
            y = ap.sin(y) if i % 2 == 0 else y * x
        (gx,) = ap.gradients(y, [x])

    def chain(x):
        y = x
        for i in range(n):
            y = jnp.sin(y) if i % 2 == 0 else y * x
        return y

    want = float(jax.grad(chain)(jnp.float32(0.7)))
    assert float(g.run(gx, {x: 0.7})) == pytest.approx(want, rel=1e-5)


def test_primitives_vs_jnp_runs_from_the_shipped_data(tmp_path):
    """The ap-vs-jnp benchmark reads the shipped ratings and records the commit it measured."""
    result = run_quick("primitives_vs_jnp.py", tmp_path, timeout=240)
    assert result["meta"]["adplugin"]["commit"], "results must name the commit they measured"
    cf = next(r for r in result["rows"] if r["benchmark"].startswith("collaborative filtering"))
    assert "4778x443" in cf["benchmark"] and cf["ap_s"] > 0 and cf["jnp_s"] > 0
    # the same program either way: adplugin's ops lower to as many HLO ops as jax.numpy's
    assert cf["hlo_ops_ap"] <= cf["hlo_ops_jnp"]
