"""examples/seed_comparison.py: four ways to differentiate 2ab² + 3a²b agree where they must."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _examples import EXAMPLES, ROOT, load_example

SCRIPT = EXAMPLES / "seed_comparison.py"
EXACT = {"f": 72.0, "df_da": 54.0, "d2f_dadb": 24.0}


seed = load_example("seed_comparison")


@pytest.fixture(scope="module")
def result():
    return seed.compare(2.0, 3.0, swell_depth=2)


def test_exact_reference():
    assert seed.exact(2.0, 3.0) == EXACT


def test_adplugin_graph_derivation_is_exact(result):
    assert result["adplugin"]["values"] == EXACT
    assert "# derivative" in result["adplugin"]["text"]
    counts = result["adplugin"]["op_count"]
    assert all(c["after"] <= c["before"] for c in counts.values())
    assert result["adplugin"]["dot"].startswith("digraph")


def test_jax_grad_on_ap_ops_is_exact(result):
    assert result["jax_grad"] == EXACT


def test_central_beats_forward_difference(result):
    rows = {r["h"]: r for r in result["numerical"]["rows"]}
    row = rows[1e-4]
    assert row["central_error"] < row["forward_error"]
    assert row["central2_error"] < row["forward2_error"]
    assert row["forward_error"] == pytest.approx(9e-4, rel=1e-3)  # (h/2)·∂²f/∂a² = 18h/2
    # round-off: forward error at h=1e-10 is far above its best
    assert rows[1e-10]["forward_error"] > 100 * rows[1e-7]["forward_error"]


def test_sympy_matches_exact(result):
    pytest.importorskip("sympy")
    s = result["symbolic"]
    assert s["values"] == EXACT
    assert s["count_ops"]["d2f_dadb"] < s["count_ops"]["f"]
    assert [w["depth"] for w in s["swell"]] == [1, 2]


def test_symbolic_skips_without_sympy(monkeypatch):
    monkeypatch.setitem(sys.modules, "sympy", None)  # makes `import sympy` fail
    assert seed.symbolic(2.0, 3.0) is None


def test_script_runs(tmp_path):
    dot = tmp_path / "grad.dot"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--swell_depth", "2", "--dot", str(dot)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "agree: True" in proc.stdout
    assert dot.read_text().startswith("digraph")
