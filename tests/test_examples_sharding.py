"""examples/data_parallel_cf.py: data-parallel collaborative filtering over a mesh of users.

The script runs in a subprocess on the course practice set (`--small`, four forced host
devices, both mesh axis types) and its summary line is checked; imported as a module, its
padded, sharded graph is checked against `jax.grad` of the unpadded cost, and its sharded
training against the unsharded one.
"""

from __future__ import annotations

import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from _examples import EXAMPLES, ROOT, load_example
from jax.sharding import PartitionSpec as P

SCRIPT = EXAMPLES / "data_parallel_cf.py"
N_MOVIES, N_USERS = 4778, 443  # the course practice set
FEATURES = 100  # the script's default


def run_script(*args: str) -> tuple[str, dict[str, str]]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--num_devices", "4",
                           "--steps", "5", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("summary: "))
    summary = dict(kv.split("=", 1) for kv in line[len("summary: "):].split())
    return proc.stdout, summary


def check_run(out: str, s: dict[str, str], axis_types: str) -> None:
    assert s["devices"] == "4" and s["axis_types"] == axis_types
    assert s["agree"] == "True" and s["predicted_ok"] == "True"
    np.testing.assert_allclose(float(s["loss_sharded"]), float(s["loss_single"]), rtol=1e-4)
    assert (s["users"], s["padded_users"]) == (str(N_USERS), "444")  # one padding user
    # one all-reduce over "data": dJ/dX (movies x features, f32) and the cost's two sums
    assert int(s["allreduce_bytes"]) == N_MOVIES * FEATURES * 4 + 2 * 4
    # the graph's text shows the user split, the predictions and the comparison are printed
    assert "Y:f32[4778,444@data]" in out and "W:f32[444@data,100]" in out
    # dJ/dW: split over users like W (a sharding constraint: the cotangent takes W's sharding)
    assert re.search(r"%\d+:f32\[444@data,100\] = shard\[sharding=P\('data',None\)\].*# derivative",
                     out)
    assert "all-reduce over data: 1911200 bytes at node %" in out
    assert re.search(r"matched\s+all-reduce\s+data\s+1911208\s+1911208", out)
    assert "ok: 1 matched, 0 mismatched, 0 missing, 0 unexpected" in out
    assert "W: P('data', None) on 4 device(s)" in out
    assert "padding users' weights stay 0" in out


def test_script_auto_axes():
    out, s = run_script()
    check_run(out, s, "auto")


def test_script_explicit_axes():
    out, s = run_script("--axis_types", "explicit")
    check_run(out, s, "explicit")


@pytest.fixture(scope="module")
def example():
    return load_example("data_parallel_cf")


@pytest.fixture(scope="module")
def small(example):
    """The first 60 movies x 13 users of the practice set (13 users: padded on any mesh)."""
    data = example.load_data(example.movielens.DEFAULT_COURSE_SMALL)
    return {k: v[:60, :13] for k, v in data.items()}


@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
def test_padded_sharded_graph_matches_jax_grad(example, small, axis_types):
    assert len(jax.devices()) >= 8  # conftest forces 8 host devices
    mesh = example.make_mesh(8, axis_types)
    padded = example.pad_users(small, 8)
    assert padded["Y"].shape == (60, 16) and not padded["R"][:, 13:].any()
    params = example.init_params(60, 13, 4, seed=3, padded_users=16)
    c = example.check_collectives(mesh, padded, params, lambda_=0.5)
    assert c["check"].ok, c["check"].table()
    assert c["allreduce_bytes"] == 60 * 4 * 4 + 2 * 4
    J, dX, dW, db = (np.asarray(v) for v in c["values"])
    assert c["values"][2].sharding.spec[0] == "data"  # dJ/dW stays split over users

    plain = example.init_params(60, 13, 4, seed=3)

    def cost(X, W, b):
        return example.movielens.cofi_cost(X, W, b, small["Y"], small["R"], 0.5)

    ref, (rX, rW, rb) = jax.value_and_grad(cost, argnums=(0, 1, 2))(
        plain["X"], plain["W"], plain["b"])
    np.testing.assert_allclose(J, float(ref), rtol=1e-5)
    np.testing.assert_allclose(dX, rX, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dW[:13], rW, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db[:, :13], rb, rtol=1e-4, atol=1e-5)
    assert not dW[13:].any() and not db[:, 13:].any()  # padding users get no gradient


def test_sharded_training_equals_single_device(example, small):
    mesh = example.make_mesh(4)
    padded = example.pad_users(small, 4)
    sharded = example.train(padded, example.init_params(60, 13, 4, padded_users=16), 4,
                            learning_rate=0.05, mesh=mesh)
    single = example.train(small, example.init_params(60, 13, 4), 4, learning_rate=0.05)
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
    assert sharded["losses"][-1] < sharded["losses"][0]
    assert sharded["shardings"]["W"].spec == P("data", None)
    assert sharded["shardings"]["b"].spec == P(None, "data")
    np.testing.assert_allclose(sharded["W"][:13], single["W"], rtol=1e-4, atol=1e-4)
    assert not sharded["W"][13:].any() and not sharded["b"][:, 13:].any()


def test_one_device_mesh_has_no_collectives(example, small):
    c = example.check_collectives(example.make_mesh(1), small, example.init_params(60, 13, 4))
    assert c["check"].ok and not c["predicted"] and len(c["measured"]) == 0
