"""benchmarks/sharding.py runs (--quick): every strategy's values agree with the replicated
run (the script checks before reporting), the planner's predictions match the HLO, and it
moves no more bytes than any baseline that fits the memory budget."""

from __future__ import annotations

from _benchmark_runner import run_quick

MODELS = {"batch_heavy_mlp", "weight_heavy_mlp", "movielens_cf"}
STRATEGIES = {"replicated", "data_parallel", "fsdp", "planner"}


def test_the_sharding_benchmark(tmp_path):
    report = run_quick("sharding.py", tmp_path, timeout=400)
    assert report["config"]["quick"] is True and set(report["models"]) == MODELS
    for name, model in report["models"].items():
        assert set(model["strategies"]) == STRATEGIES, name
        assert model["planner_le_fitting_baselines"] is True, name
        assert model["planner_predicted_ok"] is True, name
        planner = model["strategies"]["planner"]
        assert planner["fits_budget"] and planner["hlo_collective_bytes"] == \
            planner["predicted_bytes"], name
        for r in model["strategies"].values():
            assert r["step_time_s"] > 0 and r["peak_memory_bytes"] > 0
        assert model["strategies"]["replicated"]["hlo_collective_bytes"] == 0
    weight_heavy = report["models"]["weight_heavy_mlp"]["strategies"]
    assert weight_heavy["planner"]["inputs"]["w0"] == [None, "d"]  # Megatron's columns
    assert weight_heavy["planner"]["inputs"]["w1"] == ["d", None]  # then rows
