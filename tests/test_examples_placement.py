"""examples/placement_tf_style.py: TensorFlow-1-style placement on MovieLens ratings.

The script runs in a subprocess on small settings (two forced host devices, then one) and its
summary line is checked; imported as a module, its placed graph is checked against the same
graph without requests and against `jax.grad` of the collaborative-filtering cost.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import jax
import numpy as np
import pytest
from _examples import EXAMPLES, ROOT, load_example

SCRIPT = EXAMPLES / "placement_tf_style.py"


def run_script(tmp_path, *args: str) -> tuple[str, dict[str, str]]:
    svg = tmp_path / "placed.svg"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--svg", str(svg), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("summary: "))
    summary = dict(kv.split("=", 1) for kv in line[len("summary: "):].split())
    return proc.stdout, summary


def check_svg(path: str, bands: set[str]) -> None:
    root = ET.parse(path).getroot()  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert bands <= texts, f"device bands {bands} not all labelled in {sorted(texts)[:20]}"


def test_two_devices(tmp_path):
    out, s = run_script(tmp_path, "--num_devices", "2")
    assert s["devices"] == "2"
    assert float(s["loss_last"]) < float(s["loss_first"]) and s["decreased"] == "True"
    assert float(s["max_rel_diff_vs_unplaced"]) <= 1e-5 and s["agrees"] == "True"
    assert s["soft_placed"] == "True"
    # movie side and user side: 4 subprograms, W^T over and its cotangent back, plus sum(W^2)
    assert (s["subprograms"], s["transfers"]) == ("4", "3")
    assert int(s["transfer_bytes"]) == 2 * 100 * 10 * 4 + 4  # 100 users x 10 features, f32
    check_svg(s["svg"], {"cpu:0", "cpu:1"})
    assert (tmp_path / "placed.dot").read_text().count("subgraph cluster_") == 2
    # the table: requests by TF spelling, gradients colocated, the GPU request soft-placed
    assert re.search(r"%\d+\s+transpose\s+cpu:1\s+cpu:1\s+requested", out)
    assert re.search(r"colocated with %\d+ transpose", out)
    assert "rmse: soft-placed on cpu:0: no device gpu:0 (available: cpu:0, cpu:1)" in out
    # soft placement off: the placer's error, with the fix
    assert "cannot be placed as requested (soft device placement is off)" in out
    assert "fix: request an available device" in out
    assert "transfer %" in out and "cpu:1 -> cpu:0" in out and "cpu:0 -> cpu:1" in out


def test_one_device_soft_places_everything(tmp_path):
    out, s = run_script(tmp_path, "--num_devices", "1")
    assert s["devices"] == "1"
    assert (s["subprograms"], s["transfers"], s["transfer_bytes"]) == ("1", "0", "0")
    assert s["decreased"] == "True" and s["agrees"] == "True"
    assert re.search(r"transpose\s+cpu:1\s+cpu:0\s+soft-placed on cpu:0: no device cpu:1", out)
    assert re.search(r"requests\s+problem\n#1\s+%\d+ transpose\s+cpu:1 by", out)
    check_svg(s["svg"], {"cpu:0"})


def test_help_exits_zero():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "--num_devices" in proc.stdout and "--svg" in proc.stdout


@pytest.fixture(scope="module")
def example():
    return load_example("placement_tf_style")


def test_placed_graph_matches_unplaced_and_jax_grad(example):
    assert len(jax.devices()) >= 2  # conftest forces 8 host devices
    data = example.load_data(movies=60, users=25)
    params = example.init_params(60, 25, 4, seed=3)
    placed = example.build_graph(60, 25, 4, 0.5)
    plain = example.build_graph(60, 25, 4, 0.5, None, None, None)
    got = example.cost_and_grads(placed, data, params)
    want = example.cost_and_grads(plain, data, params)
    # placed on two devices: W^T and sum(W^2) on cpu:1, the rest of the cost on cpu:0
    where = placed["graph"].placement([placed["J"], placed["dW"]],
                                      example.feeds(placed, data, params))
    assert {where[placed["Wt"]].id, where[placed["J"]].id} == {1, 0}
    assert {d.id for d in got[2].devices()} == {1}, "dJ/dW stays with W's side"
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    def cost(X, W, b):
        return example.movielens.cofi_cost(X, W, b, data["Y"], data["R"], 0.5)

    ref = jax.value_and_grad(cost, argnums=(0, 1, 2))(params["X"], params["W"], params["b"])
    np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=1e-5)
    for a, b in zip(got[1:], ref[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_descent_lowers_the_loss_like_the_unplaced_graph(example):
    data = example.load_data(movies=60, users=25)
    params = example.init_params(60, 25, 4)
    placed, _ = example.descend(example.build_graph(60, 25, 4, 1.0), data, params, 5, 0.01)
    plain, _ = example.descend(example.build_graph(60, 25, 4, 1.0, None, None, None), data,
                               params, 5, 0.01)
    assert placed[-1] < placed[0]
    np.testing.assert_allclose(placed, plain, rtol=1e-5)
