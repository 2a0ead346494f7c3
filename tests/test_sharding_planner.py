"""`ap.plan_sharding` on 8 host devices: it finds data parallelism where the batch dominates
and Megatron (column-then-row) sharding where the weights do, at the analytic minimum of
collective bytes, its predictions match the compiled HLO, and no baseline that fits the same
memory budget moves fewer bytes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import adplugin as ap

MESH = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
rng = np.random.default_rng(2)


def mlp(batch: int, width: int, hidden: int) -> tuple[ap.Graph, list[Any], dict[Any, Any]]:
    """A two-layer MLP's loss and weight gradients, unannotated."""
    g = ap.Graph()
    with g:
        x = ap.placeholder((batch, width), name="x")
        w0 = ap.placeholder((width, hidden), name="w0")
        w1 = ap.placeholder((hidden, width), name="w1")
        loss = ap.mean(ap.square(ap.matmul(ap.tanh(ap.matmul(x, w0)), w1)))
        grads = ap.gradients(loss, [w0, w1])
    feed = {t: rng.standard_normal(t.shape).astype(np.float32) for t in (x, w0, w1)}
    return g, [loss, *grads], feed


def specs(plan: Any) -> dict[str, tuple[Any, ...]]:
    return {t.name: s for t, s in plan.inputs.items()}


def measured_bytes(g: ap.Graph, outs: list[Any], feed: dict[Any, Any], assignment: dict[str, Any]
                   ) -> int:
    """HLO collective bytes of the step with the inputs sharded as given, the rest propagated
    (a baseline: no per-node constraints)."""
    fixed = {t: assignment[t.name] for t in feed}
    plan = ap.plan_sharding(g, MESH, outputs=outs, fixed=fixed, scope="inputs")
    return plan_bytes(plan, feed)


def plan_bytes(plan: Any, feed: dict[Any, Any]) -> int:
    check = plan.measure(feed)
    assert check.ok, check.table()
    return sum(m.measured.nbytes for m in check.matched)


BATCH_HEAVY = (4096, 64, 64)     # data parallel: gradients all-reduced, 32 KB
WEIGHT_HEAVY = (16, 1024, 4096)  # Megatron: one activation all-reduce, 64 KB


def test_data_parallel_where_the_batch_dominates() -> None:
    g, outs, feed = mlp(*BATCH_HEAVY)
    plan = ap.plan_sharding(g, MESH, outputs=outs, memory_budget=4_000_000)
    assert specs(plan) == {"x": ("d", None), "w0": (None, None), "w1": (None, None)}
    assert plan.exhaustive and plan.per_node
    check = plan.measure(feed)
    assert check.ok, check.table()
    weights = 2 * 64 * 64 * 4
    assert plan.cost.comm_bytes == weights + 4  # the analytic minimum (+ the loss's sum)
    assert sum(m.measured.nbytes for m in check.matched) == weights + 4
    table = plan.table()
    assert "all-reduce(d)" in table and "4096@d,64" in table and "integer program" in table


def test_megatron_where_the_weights_dominate() -> None:
    g, outs, feed = mlp(*WEIGHT_HEAVY)
    plan = ap.plan_sharding(g, MESH, outputs=outs, memory_budget=16_000_000)
    assert specs(plan) == {"x": (None, None), "w0": (None, "d"), "w1": ("d", None)}
    check = plan.measure(feed)
    assert check.ok, check.table()
    assert [(c.kind, c.nbytes) for c in plan.collectives] == [("all-reduce", 16 * 1024 * 4)]
    values = g.run(outs, feed)  # the plan applied: still the unsharded values

    def loss(w0: Any, w1: Any) -> Any:
        return jnp.mean(jnp.square(jnp.tanh(feed[outs[0].graph.placeholders[0]] @ w0) @ w1))

    w0, w1 = list(feed.values())[1:]
    ref = jax.grad(loss, argnums=(0, 1))(w0, w1)
    np.testing.assert_allclose(values[1], ref[0], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(values[2], ref[1], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("dims,budget", [(BATCH_HEAVY, 4_000_000), (WEIGHT_HEAVY, 16_000_000)],
                         ids=["batch_heavy", "weight_heavy"])
def test_no_baseline_within_the_budget_moves_fewer_bytes(dims: Any, budget: int) -> None:
    g, outs, feed = mlp(*dims)
    plan = ap.plan_sharding(g, MESH, outputs=outs, memory_budget=budget)
    best = plan_bytes(plan, feed)
    inputs_only = ap.plan_sharding(g, MESH, outputs=outs, memory_budget=budget, scope="inputs")
    assert plan.cost.score <= inputs_only.cost.score + 1e-6  # the input search is a subset
    replicated = {"x": None, "w0": None, "w1": None}
    data_parallel = {"x": ("d", None), "w0": None, "w1": None}
    megatron = {"x": None, "w0": (None, "d"), "w1": ("d", None)}
    for baseline in (replicated, data_parallel, megatron):
        fixed = {t: baseline[t.name] for t in feed}
        cost = ap.plan_sharding(g, MESH, outputs=outs, fixed=fixed, scope="inputs").cost
        if cost.memory_bytes <= budget:
            assert best <= measured_bytes(g, outs, feed, baseline), baseline
    # the budget is what rules out replication (which moves nothing)
    fixed = {t: replicated[t.name] for t in feed}
    replicated_cost = ap.plan_sharding(g, MESH, outputs=outs, fixed=fixed, scope="inputs").cost
    assert replicated_cost.memory_bytes > budget


def test_the_wrong_strategy_measures_worse() -> None:
    # the planted mistake: data parallelism for the weight-heavy model moves 500x the bytes
    g, outs, feed = mlp(*WEIGHT_HEAVY)
    megatron = measured_bytes(g, outs, feed, {"x": None, "w0": (None, "d"), "w1": ("d", None)})
    data_parallel = measured_bytes(g, outs, feed, {"x": ("d", None), "w0": None, "w1": None})
    assert data_parallel > 100 * megatron


def test_fixed_inputs_and_budgets() -> None:
    g, outs, feed = mlp(*BATCH_HEAVY)
    x = next(iter(feed))
    plan = ap.plan_sharding(g, MESH, outputs=outs, fixed={x: P()})
    assert specs(plan)["x"] == (None, None)
    with pytest.raises(ap.MeshError, match="no sharding of the inputs fits the memory budget"):
        ap.plan_sharding(g, MESH, outputs=outs, memory_budget=1000)
    with pytest.raises(ap.MeshError, match="a graph needs the outputs"):
        ap.plan_sharding(g, MESH)


def test_planning_a_function() -> None:
    def step(x: Any, w: Any) -> Any:
        return jax.grad(lambda w: jnp.mean(jnp.square(jnp.tanh(x @ w))))(w)

    x, w = rng.standard_normal((4096, 32), np.float32), rng.standard_normal((32, 32), np.float32)
    plan = ap.plan_sharding(step, MESH, example_args=(x, w), memory_budget=2_000_000)
    # splitting w's columns splits every product and the gradient's columns alike: the
    # step needs no collective at all (data parallelism would all-reduce the gradient)
    assert list(plan.inputs.values()) == [(None, None), (None, "d")]
    assert plan.cost.comm_bytes == 0
    check = plan.measure(dict(zip(plan.inputs, (x, w))))
    assert check.ok and not check.matched, check.table()
    np.testing.assert_allclose(plan.graph.run(plan.outputs, dict(zip(plan.inputs, (x, w))))[0],
                               step(x, w), rtol=1e-4, atol=1e-6)


def test_every_node_planned_beats_the_input_search_and_matches_the_hlo() -> None:
    # a ratings autoencoder whose batch is small next to its weights' gradients: planning
    # every node mixes layouts (operands resharded mid-step) for fewer bytes than any
    # propagation from the inputs, and its constraints keep the values exact
    from _examples import load_example

    ex = load_example("tensor_parallel_mlp")
    data = ex.load_data(ex.movielens.DEFAULT_COURSE_SMALL, 8)
    m = ex.build(data["Y"].shape[1], 256, 64, 0.5, seed=1)
    g, outs = m["graph"], [m["loss"], *m["grads"]]
    feed = {m["Y"]: ex.batches(data, 64, 1)[0]["Y"], m["R"]: ex.batches(data, 64, 1)[0]["R"]}
    budget = 2_500_000
    inputs_only = ap.plan_sharding(g, MESH, outputs=outs, memory_budget=budget, scope="inputs")
    searched = plan_bytes(inputs_only, feed)
    plan = ap.plan_sharding(g, MESH, outputs=outs, memory_budget=budget)
    assert plan.per_node and plan.method == "integer program"
    assert plan.propagation.operand_specs  # some operands are moved before their op
    planned = plan_bytes(plan, feed)  # applies the constraints; predictions == HLO
    assert planned == plan.cost.comm_bytes < searched
    want = ap.plan_sharding(g, MESH, outputs=outs, fixed={t: None for t in plan.inputs},
                            scope="inputs")
    want.apply()  # no constraints left: the unsharded values
    expected = g.run(outs, feed)
    plan.apply()
    for a, b in zip(g.run(outs, feed), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_unknown_scope_is_refused() -> None:
    g, outs, _ = mlp(16, 8, 8)
    with pytest.raises(ap.MeshError, match="unknown scope"):
        ap.plan_sharding(g, MESH, outputs=outs, scope="everything")
