"""examples/tensor_parallel_mlp.py: the planner shards a MovieLens autoencoder MLP Megatron's
way, its predicted collectives match the HLO, and training agrees with one device.

The script runs in a subprocess (4 forced host devices, small settings) and its summary line is
checked; imported as a module, its plan is checked against jax.grad of the same loss."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _examples import EXAMPLES, ROOT, load_example

SCRIPT = EXAMPLES / "tensor_parallel_mlp.py"


def test_the_script_plans_megatron_and_agrees_with_one_device() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--num_devices", "4"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("summary: "))
    summary = dict(kv.split("=", 1) for kv in line[len("summary: "):].split())
    assert summary["devices"] == "4" and summary["plan"] == "megatron"
    assert summary["predicted_ok"] == "True" and summary["agree"] == "True"
    assert summary["decreased"] == "True" and summary["sharding_kept"] == "True"
    assert "all-reduce(model)" in proc.stdout


def test_the_planned_step_computes_jax_grads() -> None:
    ex = load_example("tensor_parallel_mlp")
    data = ex.load_data(ex.movielens.DEFAULT_COURSE_SMALL, len(jax.devices()))
    users = data["Y"].shape[1]
    m = ex.build(users, 64, 16, 0.5, seed=1)
    w0, w1 = np.asarray(m["W0"].value), np.asarray(m["W1"].value)
    feed = ex.batches(data, 16, 1)[0]
    mesh = jax.make_mesh((len(jax.devices()),), ("model",))
    plan = ex.ap.plan_sharding(m["graph"], mesh, outputs=[m["loss"], *m["grads"]])
    plan.apply()
    got = m["graph"].run([m["loss"], *m["grads"]], {m["Y"]: feed["Y"], m["R"]: feed["R"]})

    def loss(w0, w1):
        out = jnp.tanh(feed["Y"] @ w0) @ w1
        return jnp.sum(feed["R"] * (out - feed["Y"]) ** 2) / jnp.maximum(feed["R"].sum(), 1.0)

    want = [loss(w0, w1), *jax.grad(loss, argnums=(0, 1))(w0, w1)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
