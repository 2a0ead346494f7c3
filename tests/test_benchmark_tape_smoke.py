"""benchmarks/tape_training.py runs (--quick) and writes the JSON it promises."""

from __future__ import annotations

import pytest
from _benchmark_runner import run_quick


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_quick("tape_training.py", tmp_path_factory.mktemp("bench"), timeout=600)


def test_json_keys(report):
    assert {"meta", "config", "training", "latency", "reads", "indexing", "goals",
            "reference"} <= report.keys()
    assert report["config"]["quick"] is True
    training = report["training"]
    assert {"variants", "check", "ratios", "orders"} <= training.keys()
    assert {"ap", "ap_function", "jax", "tensorflow", "torch"} <= training["variants"].keys()
    for name in ("ap", "ap_function", "jax"):
        v = training["variants"][name]
        assert {"total_s", "first_step_s", "steady_step_s", "final_loss", "runs"} <= v.keys()
        assert v["total_s"] > 0 and v["steady_step_s"] > 0
        assert len(v["runs"]) == report["config"]["repeats"]
        assert len(v["runs"][0]["step_ms"]) == report["config"]["steps"]
    for name in ("tensorflow", "torch"):  # measured, or skipped with the reason
        v = training["variants"][name]
        assert "total_s" in v or v.get("skipped")
    for ours in ("ap", "ap_function"):
        assert {f"{ours}_over_jax_total", f"{ours}_over_jax_steady"} <= training["ratios"].keys()
    lat = report["latency"]
    assert {"first_ms", "compiled_median_ms", "during_compile_median_ms",
            "during_compile_calls"} <= lat["adplugin"].keys()
    assert lat["adplugin"]["first_ms"] > 0 and lat["adplugin"]["compiled_median_ms"] > 0
    assert "repeated_median_ms" in lat["torch"] or lat["torch"].get("skipped")
    reads = report["reads"]
    assert {"no_reads_ms", "read_per_op_ms", "ratio"} <= reads.keys()
    assert reads["ratio"] == pytest.approx(reads["read_per_op_ms"] / reads["no_reads_ms"])
    indexing = report["indexing"]
    assert {"ap_first_ms", "jnp_first_ms", "first_ratio", "ap_warm_ms", "jnp_warm_ms",
            "warm_ratio"} <= indexing.keys()
    assert len(report["goals"]) == 7
    for goal in report["goals"]:
        assert {"goal", "value", "target", "passed"} <= goal.keys()
        assert goal["passed"] is None  # --quick judges nothing
        assert goal["value"] > 0


def test_final_losses_agree(report):
    variants = report["training"]["variants"]
    b = variants["jax"]
    assert report["training"]["check"]["ok"] is True
    for name in ("ap", "ap_function"):
        a = variants[name]
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-3)
        assert a["first_loss"] == pytest.approx(b["first_loss"], rel=1e-5)
        assert a["final_loss"] < a["first_loss"]  # it trained


def test_function_step_traced_a_bounded_number_of_times(report):
    runs = report["training"]["variants"]["ap_function"]["runs"]
    assert all(1 <= r["tracing_count"] <= 3 for r in runs)  # discovery, then one program
