"""`ap.collectives`: the collectives of real compiled programs on the 8 host CPU devices
(tests/conftest.py forces them), and the HLO reader on snippets of every printed form.

Expected values come from the programs themselves (bytes from array shapes, groups and axes
from the mesh), never from a previous run.
"""

# ruff: noqa: E501  (HLO snippets keep XLA's long lines)
from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adplugin as ap
from adplugin.sharding import (
    Collectives,
    CollectivesError,
    PredictedCollective,
    collectives,
    compare_collectives,
    hlo,
)

# the module (the package's `collectives` attribute is the function of the same name)
collectives_module = importlib.import_module("adplugin.sharding.collectives")

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


def mesh_2x4(order: list[int] | None = None) -> Mesh:
    devices = np.array(jax.devices()[:8])
    if order is not None:
        devices = devices[order]
    return Mesh(devices.reshape(2, 4), ("x", "y"))


def put(x: jax.Array, mesh: Mesh, *spec: object) -> jax.Array:
    return jax.device_put(x, NamedSharding(mesh, P(*spec)))


def line_of(fn: Callable[..., object], needle: str) -> int:
    """The source line of `fn` holding `needle` (an independent oracle for source lines)."""
    lines, start = inspect.getsourcelines(fn)
    hits = [start + i for i, text in enumerate(lines) if needle in text]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def groups_along(mesh: Mesh, axis: str) -> set[tuple[int, ...]]:
    """Device positions that differ only along `axis`: the groups a collective over it has."""
    pos = np.arange(mesh.size).reshape(mesh.devices.shape)
    a = mesh.axis_names.index(axis)
    moved = np.moveaxis(pos, a, -1).reshape(-1, pos.shape[a])
    return {tuple(int(d) for d in row) for row in moved}


# ----------------------------------------------------------------------------------------------
# Real programs
# ----------------------------------------------------------------------------------------------


def mlp_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    with jax.named_scope("layer0"):
        h = jnp.tanh(x @ params["w0"] + params["b0"])
    with jax.named_scope("layer1"):
        out = h @ params["w1"] + params["b1"]
    return jnp.mean((out - y) ** 2)


@jax.jit
def sgd_step(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    grads = jax.grad(mlp_loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


def compile_dp(batch_axes: object) -> tuple[jax.stages.Compiled, dict[str, jax.Array], Mesh]:
    mesh = mesh_2x4()
    k = jax.random.split(jax.random.key(0), 3)
    params = {"w0": jax.random.normal(k[0], (16, 32)), "b0": jnp.zeros(32),
              "w1": jax.random.normal(k[1], (32, 4)), "b1": jnp.zeros(4)}
    params = jax.tree.map(lambda p: put(p, mesh), params)          # replicated
    x = put(jax.random.normal(k[2], (64, 16)), mesh, batch_axes)   # batch-sharded
    y = put(jnp.ones((64, 4)), mesh, batch_axes)
    return sgd_step.lower(params, x, y).compile(), params, mesh


def data_parallel_step(batch_axes: object) -> tuple[Collectives, dict[str, jax.Array], Mesh]:
    compiled, params, mesh = compile_dp(batch_axes)
    return collectives(compiled), params, mesh


def test_data_parallel_step_all_reduces_the_gradients_over_the_batch_axis() -> None:
    table, params, _ = data_parallel_step("x")
    assert {r.kind for r in table} == {"all-reduce"}
    assert all(r.axes == ("x",) for r in table)          # the batch axis, not 'y'
    assert all(r.reduce_op == "add" for r in table)
    # every gradient crosses the batch axis once: bytes = the parameters' bytes
    assert table.total_bytes == sum(p.nbytes for p in params.values())
    # one operand per gradient (XLA may reduce a weight's gradient transposed: compare sizes)
    sizes = sorted(hlo.parse_shape(o.shape)[0].size for r in table for o in r.operands)
    assert sizes == sorted(p.size for p in params.values())
    # each operand names the layer its gradient belongs to (XLA keeps it on the combined op)
    for r in table:
        for o in r.operands:
            assert o.op_name is not None and ("layer0" in o.op_name or "layer1" in o.op_name)
    assert table.by_kind()["all-reduce"].total_bytes == table.total_bytes
    # the batch axis 'x' has size 2: 4 groups of 2 devices
    assert {tuple(g) for g in table[0].replica_groups} == groups_along(mesh_2x4(), "x")


def test_batch_sharded_over_both_axes_reduces_over_both() -> None:
    table, params, _ = data_parallel_step(("x", "y"))
    assert all(set(r.axes or ()) == {"x", "y"} for r in table)
    assert all(r.group_size == 8 for r in table)
    assert table.total_bytes == sum(p.nbytes for p in params.values())


def megatron_mlp(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ w1)                # column-parallel: no communication
    with jax.named_scope("row_proj"):
        return h @ w2                   # row-parallel: partial sums, one all-reduce


def test_megatron_mlp_has_one_all_reduce_over_the_model_axis() -> None:
    mesh = mesh_2x4()
    x = put(jnp.ones((8, 16)), mesh, "x", None)
    w1 = put(jnp.ones((16, 64)), mesh, None, "y")
    w2 = put(jnp.ones((64, 16)), mesh, "y", None)
    table = collectives(jax.jit(megatron_mlp).lower(x, w1, w2))   # a Lowered is compiled
    assert len(table) == 1
    (r,) = table.rows
    assert (r.kind, r.axes) == ("all-reduce", ("y",))
    assert r.nbytes == (8 // 2) * 16 * 4                # this device's rows of the output
    assert r.op_name is not None and "row_proj" in r.op_name
    assert r.source_line == line_of(megatron_mlp, "h @ w2")
    assert r.source_file is not None and r.source_file.endswith("test_collectives.py")
    predicted = [PredictedCollective("all-reduce", ("y",), 4 * 16 * 4, "row_proj")]
    assert compare_collectives(predicted, table).ok


def resharded(x: jax.Array, mesh: Mesh) -> jax.Array:
    y = jnp.sin(x)
    z = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P()))
    return z @ z.T


def test_sharding_constraint_forces_all_gathers() -> None:
    mesh = mesh_2x4()
    x = put(jnp.ones((8, 16)), mesh, "x", "y")
    table = collectives(jax.jit(resharded, static_argnums=1).lower(x, mesh).compile())
    assert table.rows and {r.kind for r in table} == {"all-gather"}
    # together they gather both axes, and the last one yields the whole array
    assert set().union(*(set(r.axes or ()) for r in table)) == {"x", "y"}
    assert max(r.nbytes for r in table) == x.nbytes
    for r in table:
        (o,) = r.operands
        assert r.nbytes == o.nbytes == hlo.parse_shape(o.result)[0].nbytes
        assert hlo.parse_shape(o.result)[0].size == hlo.parse_shape(o.shape)[0].size * r.group_size
    # XLA gives a resharding collective the metadata of the op that produced the value
    assert {r.source_line for r in table} == {line_of(resharded, "jnp.sin(x)")}


def shard_map_program(a: jax.Array) -> tuple[jax.Array, ...]:
    with jax.named_scope("my_node"):
        s = jax.lax.psum(a, "x")
    g = jax.lax.all_gather(a, "y", tiled=True)
    p = jax.lax.ppermute(a, "y", perm=[(i, (i + 1) % 4) for i in range(4)])
    t = jax.lax.all_to_all(a, "y", 0, 0, tiled=True)
    r = jax.lax.psum_scatter(a, "x", scatter_dimension=1, tiled=True)
    return s, g, p, t, r


def compile_shard_map(mesh: Mesh) -> tuple[jax.stages.Compiled, jax.Array]:
    fn = jax.shard_map(shard_map_program, mesh=mesh, in_specs=P("x", "y"),
                       out_specs=(P(None, "y"), P("x"), P("x", "y"), P("x", "y"),
                                  P(None, ("y", "x"))), check_vma=False)
    a = jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16)
    return jax.jit(fn).lower(a).compile(), a


def test_shard_map_collectives_each_kind_with_its_axes_groups_and_bytes() -> None:
    mesh = mesh_2x4()
    compiled, a = compile_shard_map(mesh)
    table = collectives(compiled, mesh=mesh)
    by = {r.kind: r for r in table}
    assert set(by) == {"all-reduce", "all-gather", "collective-permute", "all-to-all",
                       "reduce-scatter"}
    local = a.nbytes // mesh.size                        # one device's block of `a`
    assert by["all-reduce"].axes == ("x",) and by["all-reduce"].nbytes == local
    assert by["all-gather"].axes == ("y",) and by["all-gather"].nbytes == local * 4
    assert by["collective-permute"].axes == ("y",) and by["collective-permute"].nbytes == local
    assert by["all-to-all"].axes == ("y",) and by["all-to-all"].nbytes == local
    assert by["reduce-scatter"].axes == ("x",) and by["reduce-scatter"].nbytes == local
    assert by["all-gather"].dimensions == (0,) and by["reduce-scatter"].dimensions == (1,)
    for kind, axis in [("all-reduce", "x"), ("all-gather", "y"), ("all-to-all", "y"),
                       ("reduce-scatter", "x")]:
        assert {tuple(g) for g in by[kind].replica_groups} == groups_along(mesh, axis), kind
    ring = {(i + 4 * row, (i + 1) % 4 + 4 * row) for row in range(2) for i in range(4)}
    assert set(by["collective-permute"].source_target_pairs) == ring
    # attribution: the named scope and the line of the psum
    assert "my_node" in (by["all-reduce"].op_name or "")
    assert by["all-reduce"].source_line == line_of(shard_map_program, "jax.lax.psum(a")
    assert by["all-gather"].source_line == line_of(shard_map_program, "all_gather(")
    assert by["all-reduce"].stack[0].startswith(by["all-reduce"].source_file or "?")
    assert all("my_node" not in n for r in table if r.kind != "all-reduce" for n in r.op_names)


def test_axes_follow_mesh_positions_not_device_ids() -> None:
    # the same program on a mesh with its devices shuffled: the groups are positions in the
    # program's device assignment, so 'y' is still 'y'
    mesh = mesh_2x4([3, 1, 0, 2, 7, 5, 6, 4])
    compiled, _ = compile_shard_map(mesh)
    table = collectives(compiled, mesh=mesh)
    assert {r.kind: r.axes for r in table}["all-reduce"] == ("x",)
    assert {r.kind: r.axes for r in table}["all-gather"] == ("y",)


def test_axes_name_the_given_mesh_and_text_alone_has_none() -> None:
    mesh = mesh_2x4()
    compiled, _ = compile_shard_map(mesh)
    # the same 8 devices seen as a (4, 2) mesh: groups along old 'y' = 4 consecutive positions
    other = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    table = collectives(compiled, mesh=other)
    by = {r.kind: r for r in table}
    assert by["all-reduce"].axes == ("a:(1)2",)          # stride 4 = the major half of 'a'
    assert by["all-gather"].axes in {("a:(2)2", "b"), ("b", "a:(2)2")}
    no_mesh = collectives(compiled.as_text())            # text alone: no axes, groups shown
    assert all(r.axes is None for r in no_mesh) and "groups" in no_mesh.table().splitlines()[0]


def looped(a: jax.Array) -> jax.Array:
    def body(i: int, c: jax.Array) -> jax.Array:
        return jax.lax.psum(c, "y") * 0.5 + i
    return jax.lax.fori_loop(0, 5, body, a)


def test_collective_in_a_loop_body_is_one_row_of_that_computation() -> None:
    mesh = mesh_2x4()
    fn = jax.shard_map(looped, mesh=mesh, in_specs=P("x", "y"), out_specs=P("x", "y"),
                       check_vma=False)
    compiled = jax.jit(fn).lower(jnp.ones((8, 16))).compile()
    (r,) = collectives(compiled, mesh=mesh).rows
    assert (r.kind, r.axes, r.nbytes) == ("all-reduce", ("y",), 4 * 4 * 4)
    entry = hlo.parse_module(compiled.as_text()).entry
    assert r.computation != entry and "while" in (r.op_name or "")
    assert r.source_line == line_of(looped, "psum(c")


def test_table_json_and_errors(tmp_path: Path) -> None:
    compiled, _, mesh = compile_dp("x")
    table = collectives(compiled)
    # the HLO text written to a file and read back gives the same rows (given the mesh)
    (tmp_path / "step.hlo").write_text(compiled.as_text())
    assert collectives((tmp_path / "step.hlo").read_text(), mesh=mesh).rows == table.rows
    text = table.table()
    assert text.splitlines()[0].split() == ["kind", "axes", "shape", "bytes", "op_name",
                                            "source"]
    assert f"{table.total_bytes} bytes" in text and "test_collectives.py:" in text
    data = json.loads(table.to_json())
    assert data["total_bytes"] == table.total_bytes and data["mesh_axes"] == {"x": 2, "y": 4}
    assert data["rows"][0]["kind"] == "all-reduce"
    with pytest.raises(CollectivesError, match="lower and compile"):
        collectives(sgd_step)
    x = put(jnp.ones((8, 4)), mesh, "x")
    with pytest.raises(CollectivesError, match="StableHLO"):
        collectives(jax.jit(jnp.sum).lower(x).as_text())
    with pytest.raises(CollectivesError, match="device counts"):
        collectives(compiled.as_text(), mesh=Mesh(np.array(jax.devices()[:4]), ("z",)))
    assert ap.collectives is collectives and ap.compare_collectives is compare_collectives


# ----------------------------------------------------------------------------------------------
# compare_collectives
# ----------------------------------------------------------------------------------------------


def predicted_dp(params: dict[str, jax.Array]) -> list[PredictedCollective]:
    return [PredictedCollective("all-reduce", ("x",), p.nbytes, f"layer{name[1]}")
            for name, p in params.items()]


def without_largest(preds: list[PredictedCollective]) -> list[PredictedCollective]:
    largest = max(preds, key=lambda p: p.nbytes)
    return [p for p in preds if p is not largest]


def test_compare_matches_predicted_gradients_to_the_combined_all_reduce() -> None:
    table, params, _ = data_parallel_step("x")
    check = compare_collectives(predicted_dp(params), table)
    assert check.ok, check.table()
    assert sum(len(m.predicted) for m in check.matched) == len(params)
    assert not check.unattributed
    assert "ok: " in check.table()


def test_compare_reports_missing_unexpected_and_mismatched() -> None:
    table, params, _ = data_parallel_step("x")
    preds = predicted_dp(params)
    # the largest gradient not predicted: the combined row's bytes fall short
    short = compare_collectives(without_largest(preds), table)
    assert not short.ok and short.mismatched and not short.missing
    # a collective XLA did not make
    extra = compare_collectives(preds + [PredictedCollective("all-gather", ("y",), 64, "emb")],
                                table)
    assert not extra.ok and [p.node for p in extra.missing] == ["emb"]
    # the wrong axis: nothing matches
    wrong = compare_collectives([PredictedCollective(p.kind, ("y",), p.nbytes, p.node)
                                 for p in preds], table)
    assert len(wrong.missing) == len(preds) and len(wrong.unexpected) == len(table)
    assert "MISSING" in wrong.table() and "UNEXPECTED" in wrong.table()
    # bytes off by 5% pass at rtol 0.1 and fail at rtol 0.01
    scaled = [PredictedCollective(p.kind, p.axes, int(p.nbytes * 1.05), p.node) for p in preds]
    assert compare_collectives(scaled, table).ok
    assert not compare_collectives(scaled, table, bytes_rtol=0.01).ok
    # dict rows and rows without node names work; every measured row is then unattributed
    anon = compare_collectives([{"kind": "all_reduce", "axes": "x", "bytes": p.nbytes}
                                for p in preds], table)
    assert anon.ok and len(anon.unattributed) == len(table)
    with pytest.raises(CollectivesError, match="mesh axes"):
        compare_collectives(preds, collectives(compile_dp("x")[0].as_text()))


def check_short_predictions_fail(table: Collectives, preds: list[PredictedCollective]) -> None:
    check = compare_collectives(without_largest(preds), table)
    assert not check.ok and len(check.mismatched) == 1


def test_compare_on_shard_map_attributes_the_named_node_only() -> None:
    mesh = mesh_2x4()
    compiled, a = compile_shard_map(mesh)
    table = collectives(compiled, mesh=mesh)
    local = a.nbytes // mesh.size
    predicted = [PredictedCollective("all-reduce", ("x",), local, "my_node"),
                 PredictedCollective("all-gather", ("y",), 4 * local),
                 PredictedCollective("collective-permute", ("y",), local),
                 PredictedCollective("all-to-all", ("y",), local),
                 PredictedCollective("reduce-scatter", ("x",), local)]
    check = compare_collectives(predicted, table)
    assert check.ok, check.table()
    # only the psum's op_name carries a predicted node
    assert {r.kind for r in check.unattributed} == {
        "all-gather", "collective-permute", "all-to-all", "reduce-scatter"}
    # a node that the program never names is attributed nowhere, yet matches by kind and axes
    renamed = [PredictedCollective(p.kind, p.axes, p.nbytes, "other") for p in predicted]
    assert compare_collectives(renamed, table).ok
    assert len(compare_collectives(renamed, table).unattributed) == len(table)


def test_compare_prefers_rows_naming_the_node() -> None:
    body = """
    %a = f32[8,4]{1,0} all-reduce(%p), replica_groups={{0,4},{1,5},{2,6},{3,7}}, to_apply=%add, metadata={op_name="jit(f)/A/psum"}
    %b = f32[8,4]{1,0} all-reduce(%p), replica_groups={{0,4},{1,5},{2,6},{3,7}}, to_apply=%add, metadata={op_name="jit(f)/B/psum"}
    """
    table = collectives(module(body), mesh=mesh_2x4())
    assert [r.axes for r in table] == [("x",), ("x",)]

    def pred(node: str | None, nbytes: int = 128) -> PredictedCollective:
        return PredictedCollective("all-reduce", ("x",), nbytes, node)

    def pairs(preds: list[PredictedCollective]) -> list[tuple[str, tuple[str | None, ...]]]:
        check = compare_collectives(preds, table)
        return [(m.measured.name, tuple(p.node for p in m.predicted))
                for m in check.matched + check.mismatched]

    assert pairs([pred("B"), pred("A")]) == [("a", ("A",)), ("b", ("B",))]
    # B alone: its row is b, and a (named by no prediction) is unexpected
    check = compare_collectives([pred("B")], table)
    assert pairs([pred("B")]) == [("b", ("B",))] and [r.name for r in check.unexpected] == ["a"]
    # two A's: the second goes to the row no prediction names
    assert pairs([pred("A"), pred("A")]) == [("a", ("A",)), ("b", ("A",))]
    # A and B with B too large: B stays on its own row, as a byte mismatch
    check = compare_collectives([pred("A"), pred("B", 512)], table)
    assert [m.measured.name for m in check.mismatched] == ["b"] and not check.missing


def test_planted_bug_skipping_the_byte_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    table, params, _ = data_parallel_step("x")
    check_short_predictions_fail(table, predicted_dp(params))
    compare_module = importlib.import_module("adplugin.sharding.compare")
    monkeypatch.setattr(compare_module, "bytes_agree", lambda p, m, rtol: True)
    with pytest.raises(AssertionError):
        check_short_predictions_fail(table, predicted_dp(params))


# ----------------------------------------------------------------------------------------------
# The HLO reader on snippets
# ----------------------------------------------------------------------------------------------

ADD = """
%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}
"""


def module(body: str, params: str = "%p = f32[8,4]{1,0} parameter(0)", n: int = 8) -> str:
    return (f"HloModule m, entry_computation_layout={{()->()}}, num_partitions={n}\n{ADD}\n"
            f"ENTRY %main () -> () {{\n  {params}\n" + "\n".join(
                "  " + ln.strip() for ln in body.strip().splitlines()) + "\n}\n")


def one(body: str, params: str = "%p = f32[8,4]{1,0} parameter(0)"
        ) -> collectives_module.Collective:
    (row,) = collectives(module(body, params)).rows
    return row


@pytest.mark.parametrize("groups, expected", [
    ("{{0,1},{2,3},{4,5},{6,7}}", [(0, 1), (2, 3), (4, 5), (6, 7)]),
    ("{}", [tuple(range(8))]),
    ("[2,4]<=[8]", [(0, 1, 2, 3), (4, 5, 6, 7)]),
    # iota(8) as [2,4], transposed: its columns [0,4], [1,5], ... read row by row
    ("[4,2]<=[2,4]T(1,0)", [(0, 4), (1, 5), (2, 6), (3, 7)]),
    ("[2,4]<=[4,2]T(1,0)", [(0, 2, 4, 6), (1, 3, 5, 7)]),
    ("mesh['axis_0'=2,'axis_1'=4] {'axis_1'}", [(0, 1, 2, 3), (4, 5, 6, 7)]),
    ("mesh['axis_0'=2,'axis_1'=4] {'axis_0'}", [(0, 4), (1, 5), (2, 6), (3, 7)]),
    # both axes, 'axis_1' listed first so it is the major one within the group
    ("mesh['axis_0'=2,'axis_1'=4] {'axis_1','axis_0'}", [(0, 4, 1, 5, 2, 6, 3, 7)]),
    # device ids: iota [2,4] transposed = [0,4,1,5,2,6,3,7] laid out as the (4, 2) mesh
    ("mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_1'}",
     [(0, 4), (1, 5), (2, 6), (3, 7)]),
    ("mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}",
     [(0, 1, 2, 3), (4, 5, 6, 7)]),
    ("mesh['a'=4,'b'=2], device_ids=(7,6,5,4,3,2,1,0) {'b'}", [(7, 6), (5, 4), (3, 2), (1, 0)]),
    # sub-axes: 'a'=8 seen as [pre, size, rest]; the middle factor is grouped
    ("mesh['a'=8] {'a':(1)2}", [(0, 4), (1, 5), (2, 6), (3, 7)]),
    ("mesh['a'=8] {'a':(2)4}", [(0, 1, 2, 3), (4, 5, 6, 7)]),
    ("mesh['a'=8] {'a':(2)2}", [(0, 2), (1, 3), (4, 6), (5, 7)]),
])
def test_replica_group_forms(groups: str, expected: list[tuple[int, ...]]) -> None:
    got = hlo.parse_replica_groups(groups, 8)
    assert sorted(got) == sorted(expected)
    r = one(f"%ar = f32[8,4]{{1,0}} all-reduce(%p), channel_id=1, replica_groups={groups}, "
            "use_global_device_ids=true, to_apply=%add")
    assert sorted(r.replica_groups) == sorted(expected) and r.use_global_device_ids
    assert r.channel_id == 1 and r.reduce_op == "add"


def check_transposed_iota() -> None:
    assert hlo.parse_replica_groups("[4,2]<=[2,4]T(1,0)", 8) == ((0, 4), (1, 5), (2, 6), (3, 7))


def test_planted_bug_iota_without_transpose_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    check_transposed_iota()
    real = hlo.iota_array
    monkeypatch.setattr(hlo, "iota_array", lambda reshape, perm, dims: real(reshape, None, dims))
    with pytest.raises(AssertionError):
        check_transposed_iota()


def test_planted_bug_ignoring_the_device_assignment_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a mesh whose devices run in another order than the program's: logical id i runs on the
    # i-th device of the program, which sits elsewhere in this mesh
    compiled, _ = compile_shard_map(mesh_2x4())
    swapped = mesh_2x4([0, 4, 1, 5, 2, 6, 3, 7])
    # psum over 'x' pairs devices (0,4), (1,5), ...: in `swapped` those sit side by side
    # along 'y' (positions (0,0),(0,1) ...): the minor half of 'y', i.e. sub-axis y:(2)2
    by = {r.kind: r.axes for r in collectives(compiled, mesh=swapped)}
    assert by["all-reduce"] == ("y:(2)2",)
    monkeypatch.setattr(collectives_module, "_device_assignment", lambda c: None)
    planted = {r.kind: r.axes for r in collectives(compiled, mesh=swapped)}
    assert planted["all-reduce"] == ("x",)            # wrong: read as positions of `swapped`
    assert planted != by


@pytest.mark.parametrize("shape, nbytes", [
    ("f32[8,4]", 128), ("bf16[8,4]", 64), ("s32[3]", 12), ("pred[10]", 10), ("f64[2]", 16),
    ("s8[5]", 5), ("c64[2]", 16), ("f8e4m3fn[6]", 6), ("s4[3]", 2), ("f32[]", 4),
])
def test_bytes_per_dtype(shape: str, nbytes: int) -> None:
    r = one(f"%ar = {shape} all-reduce(%p), replica_groups={{{{0,1,2,3,4,5,6,7}}}}, "
            "to_apply=%add", params=f"%p = {shape} parameter(0)")
    assert r.nbytes == nbytes and r.operands[0].shape == shape


def test_combined_all_reduce_is_one_row_with_every_operand() -> None:
    body = """
    %q = bf16[16]{0} parameter(1)
    %r = s32[2,2]{1,0} parameter(2)
    %ar = (f32[8,4]{1,0}, bf16[16]{0}, s32[2,2]{1,0}) all-reduce(%p, %q, %r), channel_id=3, replica_groups=[4,2]<=[8], use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(f)/(a/dot:b/mul:c/add)" stack_frame_id=1}
    %g0 = f32[8,4]{1,0} get-tuple-element(%ar), index=0, metadata={op_name="jit(f)/a/dot"}
    %g2 = s32[2,2]{1,0} get-tuple-element(%ar), index=2, metadata={op_name="jit(f)/c/add"}
    """
    r = one(body)
    assert r.nbytes == 8 * 4 * 4 + 16 * 2 + 4 * 4
    assert [o.shape for o in r.operands] == ["f32[8,4]", "bf16[16]", "s32[2,2]"]
    assert r.op_names == ("jit(f)/a/dot", "jit(f)/b/mul", "jit(f)/c/add")
    # XLA marks every fifth item of long operand lists and tuple shapes with a comment
    many = ", ".join(["%p"] * 5 + ["/*index=5*/%p"] * 1 + ["%p"])
    shape = ", ".join(["f32[8,4]{1,0}"] * 5 + ["/*index=5*/f32[8,4]{1,0}", "f32[8,4]{1,0}"])
    r7 = one(f"%ar = ({shape}) all-reduce({many}), replica_groups={{}}, to_apply=%add")
    assert len(r7.operands) == 7 and r7.nbytes == 7 * 128
    from adplugin.sharding.collectives import split_merged_op_name
    assert split_merged_op_name("jit(f)/(x(y):z)") == ["jit(f)/x(y)", "jit(f)/z"]
    assert split_merged_op_name("jit(f)/transpose(jvp(a))") == ["jit(f)/transpose(jvp(a))"]


def test_async_pairs_count_once_with_done_shapes() -> None:
    body = """
    %ars = f32[8,4]{1,0} all-reduce-start(f32[8,4]{1,0} %p), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true, to_apply=%add
    %ard = f32[8,4]{1,0} all-reduce-done(f32[8,4]{1,0} %ars)
    %ags = (f32[8,4]{1,0}, f32[16,4]{1,0}) all-gather-start(f32[8,4]{1,0} %ard), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}, use_global_device_ids=true
    %agd = f32[16,4]{1,0} all-gather-done((f32[8,4]{1,0}, f32[16,4]{1,0}) %ags)
    %cps = (f32[8,4]{1,0}, f32[8,4]{1,0}, u32[], u32[]) collective-permute-start(f32[8,4]{1,0} %p), channel_id=3, source_target_pairs={{0,1},{1,0}}
    %cpd = f32[8,4]{1,0} collective-permute-done(%cps)
    """
    rows = collectives(module(body)).rows
    assert [(r.kind, r.is_async) for r in rows] == [
        ("all-reduce", True), ("all-gather", True), ("collective-permute", True)]
    assert [r.nbytes for r in rows] == [128, 256, 128]
    assert rows[1].operands[0].result == "f32[16,4]"
    assert rows[2].source_target_pairs == ((0, 1), (1, 0))
    assert "* async" in collectives(module(body)).table()


def test_async_wrapper_computation_counts_the_wrapped_collective_once() -> None:
    text = module("""
    %rss = ((f32[8,4]{1,0}), f32[4,4]{1,0}) async-start(%p), calls=%wrapped, metadata={op_name="jit(f)/rs"}
    %rsd = f32[4,4]{1,0} async-done(%rss)
    """)
    wrapped = """
%wrapped (w: f32[8,4]) -> f32[4,4] {
  %w = f32[8,4]{1,0} parameter(0)
  ROOT %rs = f32[4,4]{1,0} reduce-scatter(%w), channel_id=1, replica_groups={{0,1}}, dimensions={0}, to_apply=%add
}
"""
    text = text.replace("ENTRY", wrapped + "\nENTRY")
    (r,) = collectives(text).rows
    assert (r.kind, r.is_async, r.nbytes, r.op_name) == ("reduce-scatter", True, 128, "jit(f)/rs")
    assert r.operands[0].result == "f32[4,4]"
    # the same printed as `reduce-scatter-start(...), calls=%wrapped`: still one row
    sugared = text.replace("async-start(%p), calls=%wrapped", "reduce-scatter-start(%p), "
                           "channel_id=1, replica_groups={{0,1}}, dimensions={0}, "
                           "to_apply=%add, calls=%wrapped")
    sugared = sugared.replace("async-done(%rss)", "reduce-scatter-done(%rss)")
    (s,) = collectives(sugared).rows
    assert (s.kind, s.is_async, s.nbytes, s.name) == ("reduce-scatter", True, 128, "rss")
    assert s.operands[0].result == "f32[4,4]"


def test_collective_permute_combined_and_in_place_forms() -> None:
    pairs = "source_target_pairs={{0,1},{1,0}}"
    combined = one(f"%cp = (f32[8,4]{{1,0}}, f32[8,4]{{1,0}}, f32[8,4]{{1,0}}, f32[8,4]{{1,0}}) "
                   f"collective-permute(%p, %p, %p, %p), channel_id=1, {pairs}")
    assert len(combined.operands) == 4 and combined.nbytes == 4 * 128
    in_place = one(f"""
    %out = f32[8,4]{{1,0}} parameter(1)
    %i = s32[] parameter(2)
    %offsets = (s32[], s32[]) tuple(%i, %i)
    %cp = (f32[8,4]{{1,0}}, f32[8,4]{{1,0}}, u32[], u32[]) collective-permute-start(%p, %out, %offsets, %offsets), channel_id=1, {pairs}
    %cpd = f32[8,4]{{1,0}} collective-permute-done(%cp)
    """)
    assert len(in_place.operands) == 1 and in_place.nbytes == 128 and in_place.is_async


def test_groups_that_are_not_mesh_axes_have_no_axes() -> None:
    mesh = mesh_2x4()
    for groups in ["{{0,5},{1,4},{2,7},{3,6}}", "{{0,1,2},{3,4,5},{6,7}}"]:
        r = collectives(module(f"%ar = f32[8,4]{{1,0}} all-reduce(%p), replica_groups={groups}, "
                               "to_apply=%add"), mesh=mesh)
        assert r[0].axes is None and r.table().splitlines()[1].split()[1] == "?"
    ok = collectives(module("%ar = f32[8,4]{1,0} all-reduce(%p), replica_groups={{0},{1},{2},"
                            "{3},{4},{5},{6},{7}}, to_apply=%add"), mesh=mesh)
    assert ok[0].axes == () and ok[0].wire_bytes == 0


def test_stack_frames_and_old_style_source_metadata() -> None:
    frames = """
FileNames
1 "/src/train.py"

FunctionNames
1 "<module>"
2 "step"
3 "loss"

FileLocations
1 {file_name_id=1 function_name_id=1 line=40 end_line=40 column=1 end_column=1}
2 {file_name_id=1 function_name_id=2 line=20 end_line=20 column=1 end_column=1}
3 {file_name_id=1 function_name_id=3 line=10 end_line=10 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=%s}
2 {file_location_id=2 parent_frame_id=%s}
3 {file_location_id=3 parent_frame_id=%s}
"""
    body = ('%ar = f32[8,4]{1,0} all-reduce(%p), replica_groups={}, to_apply=%add, '
            'metadata={op_name="jit(step)/psum" stack_frame_id=3}')
    want = ("/src/train.py:10 (loss)", "/src/train.py:20 (step)", "/src/train.py:40 (<module>)")
    # XLA (jax 0.10.2) prints each caller id one too high; a printer that does not is read too
    for parents in [(1, 2, 3), (0, 1, 2)]:
        text = module(body).replace("\n%add", frames % parents + "\n%add", 1)
        r = one_text(text)
        assert r.stack == want and (r.source_file, r.source_line) == ("/src/train.py", 10)
        assert r.source == "train.py:10"
    old = one('%ar = f32[8,4]{1,0} all-reduce(%p), replica_groups={}, to_apply=%add, '
              'metadata={op_type="psum" op_name="f/psum" source_file="/a/b.py" source_line=7}')
    assert (old.source, old.op_name, old.stack) == ("b.py:7", "f/psum", ())


def one_text(text: str) -> collectives_module.Collective:
    (row,) = collectives(text).rows
    return row


def test_reader_errors_name_the_problem() -> None:
    with pytest.raises(hlo.HloParseError, match="HloModule"):
        collectives("not hlo at all")
    with pytest.raises(CollectivesError, match="defined nowhere"):
        collectives(module("%ar = f32[2] all-reduce(%nope), replica_groups={}, to_apply=%add"))
    with pytest.raises(hlo.HloParseError, match="replica_groups"):
        hlo.parse_replica_groups("<<weird>>", 8)
    assert math.prod(hlo.iota_array([2, 4], [1, 0], [8]).shape) == 8
