"""The benchmark notebooks (benchmarks/nb_*.py, jupytext percent format) execute without error.

Each notebook is converted in memory with jupytext and executed with nbclient in a kernel
running this interpreter (a kernelspec written to a temporary folder, so neither a user's nor
the system's `python3` kernelspec is picked up), with 8 host CPU devices, the SMALL switch on
and the output folder set to a temporary folder. The JSON each writes is checked: keys, the
commit measured, and the correctness figures its own assertions are about. A notebook with a
planted error must fail here, and so must one whose correctness check is given a wrong case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
import nbformat  # noqa: E402 - installed with nbclient
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
KERNEL = "adplugin-notebook-test"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    """A kernelspec folder whose one kernel is this interpreter's ipykernel."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "adplugin tests", "language": "python"}))
    return root


def kernel_env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    env.update(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8".strip(),
               JAX_PLATFORMS="cpu", ADPLUGIN_NOTEBOOK_SMALL="1",
               ADPLUGIN_NOTEBOOK_OUT=str(out), PYDEVD_DISABLE_FILE_VALIDATION="1")
    return env


def read_notebook(name: str) -> Any:
    return jupytext.read(BENCHMARKS / f"{name}.py", fmt="py:percent")


def execute(nb: Any, kernels: Path, out: Path) -> Any:
    """Run every cell of `nb` in a fresh kernel (cwd benchmarks/); raises CellExecutionError."""
    km = AsyncKernelManager(kernel_name=KERNEL,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(BENCHMARKS)}})
    client.execute(env=kernel_env(out))
    return nb


def insert_after(nb: Any, marker: str, source: str) -> Any:
    """`nb` with a code cell holding `source` after the first cell that contains `marker`."""
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and marker in c.source)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source))
    return nb


def git_head() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def outputs(nb: Any, kind: str) -> list[Any]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


@pytest.fixture(scope="module")
def run(kernels, tmp_path_factory):
    """Executes each notebook once (on first use); returns (executed notebook, JSON, folder)."""
    done: dict[str, tuple[Any, dict[str, Any], Path]] = {}

    def get(name: str, extra_cell: str | None = None) -> tuple[Any, dict[str, Any], Path]:
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            nb = read_notebook(name)
            if extra_cell is not None:
                nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
            executed = execute(nb, kernels, out)
            done[name] = (executed, json.loads((out / f"{name}.json").read_text()), out)
        return done[name]

    return get


def check_common(name: str, nb: Any, result: dict[str, Any], out: Path,
                 figures: int) -> None:
    meta = result["meta"]
    assert meta["notebook"] == name and meta["small"] is True
    assert meta["in_notebook"] is True, "figures must be shown inline when run in a kernel"
    assert meta["devices"] == 8, "the kernel must see the 8 host devices of XLA_FLAGS"
    head = git_head()
    assert head is not None and meta["adplugin"]["commit"] == head, "results record the commit"
    assert result["settings"]["small"] is True
    assert result["check"]["ok"] is True
    pngs = sorted(out.glob(f"{name}*.png"))
    assert len(pngs) == figures and all(p.stat().st_size > 1000 for p in pngs)
    assert len(outputs(nb, "image/png")) == figures, "each figure is shown in the notebook"


def test_derivation(run):
    nb, result, out = run("nb_derivation")
    check_common("nb_derivation", nb, result, out, figures=3)
    check = result["check"]
    assert check["adplugin"] == pytest.approx(check["jax_grad"], rel=1e-5)
    assert check["adplugin_simplified"] == pytest.approx(check["jax_grad"], rel=1e-5)
    assert check["sympy"] == pytest.approx(check["jax_grad"], rel=1e-4)
    sizes = result["settings"]["sizes"]
    assert [r["n"] for r in result["rows"]] == sizes
    assert set(result["ratios"]["ap_over_jax"]) == {str(n) for n in sizes}
    assert all(v > 0 for v in result["ratios"]["ap_over_jax"].values())
    sympy_sizes = [n for n in sizes if n <= result["settings"]["sympy_max"]]
    assert sorted(int(n) for n in result["ratios"]["ap_over_sympy"]) == sympy_sizes
    for row in result["rows"]:
        assert row["derivative_nodes_per_forward_node"] <= 4.0


def test_tape_training(run):
    nb, result, out = run("nb_tape_training")
    check_common("nb_tape_training", nb, result, out, figures=2)
    settings, check, variants = result["settings"], result["check"], result["variants"]
    for v in ("ap", "ap_function", "jax"):
        assert len(variants[v]["losses"]) == settings["steps"]
        assert len(variants[v]["step_ms"][0]) == settings["steps"]
        assert check["max_rel_diff_vs_jax"][v] <= settings["loss_rtol"]
    assert variants["jax"]["losses"][-1] < variants["jax"]["losses"][0]
    assert variants["ap"]["losses"] == pytest.approx(variants["jax"]["losses"], rel=1e-3)
    assert {"ap_over_jax_steady", "ap_function_over_jax_steady"} <= result["ratios"].keys()
    torch = variants["torch"]  # measured, or skipped with the reason
    assert ("losses" in torch and "torch_over_jax_steady" in result["ratios"]) or \
        torch.get("skipped")


def test_eager_dispatch_in_this_interpreter(run):
    code = "import sys\nprint('KERNEL', sys.executable)"
    nb, result, out = run("nb_eager_dispatch", extra_cell=code)
    check_common("nb_eager_dispatch", nb, result, out, figures=1)
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert f"KERNEL {sys.executable}" in printed
    rows = result["rows"]
    assert len(rows) == result["check"]["cases"] >= 12
    assert all(r["ap_us"] > 0 and r["jnp_us"] > 0 and r["ratio_ap_over_jnp"] > 0 for r in rows)
    assert result["settings"]["shape"] == [32, 32]


def test_placement(run):
    nb, result, out = run("nb_placement")
    check_common("nb_placement", nb, result, out, figures=1)
    check, branches, overhead = result["check"], result["branches"], result["overhead"]
    assert check["branches_max_rel_diff"] <= check["rtol"] and check["chain_bit_equal"] is True
    values = check["branch_values"]
    assert set(values) == {"two_devices", "one_device", "unplaced"}
    assert values["two_devices"] == pytest.approx(values["unplaced"], rel=1e-5)
    for k in ("two_devices", "one_device", "unplaced"):
        assert len(branches["runs_s"][k]) == result["settings"]["repeats"]
        assert branches["median_s"][k] > 0
    assert overhead["subprograms"] == 4 and overhead["transfers"] == 3
    assert len(result["partitions"]["branches"]) == 3  # a branch per device, then the sum
    assert result["ratios"]["two_over_one_device"] == pytest.approx(
        branches["median_s"]["two_devices"] / branches["median_s"]["one_device"])
    assert overhead["overhead_us"] == pytest.approx(
        overhead["median_us"]["four_subprograms"] - overhead["median_us"]["unplaced"])


def test_sharding(run):
    nb, result, out = run("nb_sharding")
    check_common("nb_sharding", nb, result, out, figures=1)
    settings, check, models = result["settings"], result["check"], result["models"]
    assert set(models) == {"batch_heavy_mlp", "weight_heavy_mlp", "movielens_cf"}
    assert settings["mesh"] == {"d": 8}
    strategies = ["replicated", "data_parallel", "fsdp", "planner"]
    for name, model in models.items():
        rows = model["strategies"]
        assert list(rows) == strategies
        assert all(d <= check["rtol"] for d in check["max_rel_diff"][name].values())
        assert rows["replicated"]["hlo_collective_bytes"] == 0
        assert not rows["replicated"]["fits_budget"]  # the budget is half of replication's
        for r in rows.values():
            assert len(r["runs_s"]) == settings["repeats"] and r["step_time_s"] > 0
            assert r["peak_memory_bytes"] > 0 and r["model_memory_bytes"] > 0
            assert r["fits_budget"] == (r["model_memory_bytes"] <= model["budget_bytes"])
        planner = rows["planner"]
        assert planner["fits_budget"] and planner["predicted_ok"]
        assert planner["predicted_bytes"] == planner["hlo_collective_bytes"]
        assert all(planner["hlo_collective_bytes"] <= r["hlo_collective_bytes"]
                   for k, r in rows.items() if k != "planner" and r["fits_budget"])
        assert model["planner_le_fitting_baselines"] is True
    megatron = models["weight_heavy_mlp"]["strategies"]["planner"]["inputs"]
    assert megatron["w0"] == [None, "d"] and megatron["w1"] == ["d", None]
    assert result["megatron"]["inputs"] == megatron
    batch, width, _ = settings["mlp_sizes"]["weight_heavy_mlp"]
    assert models["weight_heavy_mlp"]["strategies"]["planner"]["hlo_collective_bytes"] == \
        batch * width * 4  # one all-reduce of the second matmul's output


def test_a_notebook_that_errors_fails(kernels, tmp_path):
    nb = insert_after(read_notebook("nb_eager_dispatch"), "SMALL, pick",
                      "raise RuntimeError('planted error')")
    with pytest.raises(CellExecutionError, match="planted error"):
        execute(nb, kernels, tmp_path)
    assert not list(tmp_path.glob("*.json")), "a failed notebook writes no result"


def test_a_wrong_result_fails_the_notebook(kernels, tmp_path):
    """The notebook's own correctness check, not this test, catches a wrong value."""
    wrong = 'CASES.insert(0, ("planted exp vs sin", lambda: ap.exp(x), lambda: jnp.sin(x)))'
    nb = insert_after(read_notebook("nb_eager_dispatch"), "CASES = [", wrong)
    with pytest.raises(CellExecutionError, match="planted exp vs sin: ap != jnp"):
        execute(nb, kernels, tmp_path)
    assert not list(tmp_path.glob("*.json"))


def test_a_notebook_runs_as_a_script(tmp_path):
    """Percent format is plain Python: `python benchmarks/nb_....py` works too."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "nb_eager_dispatch.py")],
                          capture_output=True, text=True, timeout=300,
                          env=kernel_env(tmp_path), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "nb_eager_dispatch.json").read_text())
    assert result["meta"]["in_notebook"] is False and result["check"]["ok"] is True
    assert (tmp_path / "nb_eager_dispatch.png").stat().st_size > 1000
    assert re.search(r"all \d+ cases agree with jax\.numpy", proc.stdout)
