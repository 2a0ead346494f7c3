"""Per-node sharding plans: a strategy for every node, chosen by a 0-1 integer program.

An op node's *strategy* is the specs its operands are consumed in; its result's spec is what
its primitive's sharding rule gives for them (strategies the rule refuses are not offered).
Inputs (placeholders, variables) choose among `candidates`, or keep a fixed spec; constants
stay replicated (slicing a constant is free). Costs, per device, as the predictions count them:

- a node: its own collectives (a contraction's partial sums or one-sided gathers, a reduction
  over sharded dimensions), each its bytes plus `bytes_per_collective` (its fixed latency),
  plus its flops / `flops_per_byte`;
- an edge (producer `u` -> operand `i` of `v`): moving `u`'s result to the spec `v` consumes it
  in (an all-gather of the axes removed, an all-to-all of the axes moved, each costed alike;
  adding an axis is a local slice, free).

Memory: the per-device bytes of every value computed from the inputs, under the budget (and,
weighted by `MEMORY_TIE`, a tie-breaker: of two equally cheap plans the leaner one).

The program: a binary `x[v, s]` per node and strategy (one per node); per edge a transport
block `e[c, d] >= 0` whose row sums are `[u's result spec is c]` and column sums
`[v's operand spec is d]`, so that `e` marks the one pair chosen and costs its reshard.
`scipy.optimize.milp` (HiGHS) solves it to optimality, chains and trees included. Past
`MILP_LIMIT` variables (or if the solver gives up) the caller falls back to the input search.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, sparse

from adplugin._errors import ShardingRuleError
from adplugin.ir.graph import CONSTANT, PLACEHOLDER, Node
from adplugin.ir.variables import VARIABLE
from adplugin.sharding.mesh import Spec, axis_names
from adplugin.sharding.predict import node_collectives, per_device_bytes, reshard_rows

MILP_LIMIT = 200_000  # variables; past it the program is not built
PRODUCT_LIMIT = 512  # operand spec tuples tried per node before narrowing
TIME_LIMIT_S = 60.0
MEMORY_TIE = 1e-6  # cost per byte of memory: among equally cheap plans, the leanest


@dataclass(frozen=True)
class Strategy:
    operands: tuple[Spec, ...]  # the specs the operands are consumed in
    out: Spec  # the result's spec (the rule's)
    comm: int  # the node's own collective bytes
    collectives: int  # and how many collectives
    flops: float
    memory: int  # per-device bytes of the result (0 where no input flows in)


@dataclass
class NodePlan:
    chosen: dict[int, Strategy]  # node id -> its strategy
    variables: int  # the integer program's size
    flops: float
    memory: int


def plan_nodes(nodes: Sequence[Node], sizes: dict[str, int], choices: dict[int, list[Spec]],
               memory_budget: int | None, flops_per_byte: float, bytes_per_collective: float,
               candidates: Any) -> NodePlan | None:
    """The optimal strategies (see the module); None past the size limit or if the solver
    gives up; a plan with nothing chosen where no assignment fits the memory budget."""
    strategies = _strategies(nodes, sizes, choices, candidates)
    edges = _edges(nodes, strategies, sizes, bytes_per_collective)
    n_x = sum(len(s) for s in strategies.values())
    n_e = sum(len(block) for *_, block in edges)
    if n_x + n_e > MILP_LIMIT:
        return None
    ids = list(strategies)
    offset: dict[int, int] = {}
    k = 0
    for i in ids:
        offset[i], k = k, k + len(strategies[i])
    cost = np.zeros(n_x + n_e)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def row(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lo)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lo.append(low)
        hi.append(high)

    for i in ids:  # one strategy per node
        for j, s in enumerate(strategies[i]):
            cost[offset[i] + j] = (s.comm + s.collectives * bytes_per_collective +
                                   s.flops / flops_per_byte + s.memory * MEMORY_TIE)
        row([(offset[i] + j, 1.0) for j in range(len(strategies[i]))], 1, 1)
    e = n_x
    for u, v, slot, block in edges:  # transport blocks: e[c, d] marks the pair chosen
        outs = sorted({c for c, _ in block}, key=repr)
        ins = sorted({d for _, d in block}, key=repr)
        index = {}
        for (c, d), nbytes in block.items():
            index[c, d] = e
            cost[e] = nbytes
            e += 1
        for c in outs:
            row([(index[c, d], 1.0) for d in ins if (c, d) in index] +
                [(offset[u] + j, -1.0) for j, s in enumerate(strategies[u]) if s.out == c], 0, 0)
        for d in ins:
            row([(index[c, d], 1.0) for c in outs if (c, d) in index] +
                [(offset[v] + j, -1.0) for j, s in enumerate(strategies[v])
                 if s.operands[slot] == d], 0, 0)
    if memory_budget is not None:
        row([(offset[i] + j, float(s.memory)) for i in ids
             for j, s in enumerate(strategies[i]) if s.memory], -np.inf, memory_budget)
    matrix = sparse.csr_array((vals, (rows, cols)), shape=(len(lo), n_x + n_e))
    integrality = np.concatenate([np.ones(n_x), np.zeros(n_e)])
    result = optimize.milp(cost, integrality=integrality,
                           bounds=optimize.Bounds(0, np.concatenate([np.ones(n_x),
                                                                     np.full(n_e, np.inf)])),
                           constraints=optimize.LinearConstraint(matrix, lo, hi),
                           options={"time_limit": TIME_LIMIT_S})
    if result.status == 2:  # infeasible: no assignment fits the budget
        return NodePlan({}, n_x + n_e, 0.0, 0)
    if result.x is None:
        return None
    chosen = {i: strategies[i][int(np.argmax(result.x[offset[i]:offset[i] + len(strategies[i])]))]
              for i in ids}
    return NodePlan(chosen, n_x + n_e, sum(s.flops for s in chosen.values()),
                    sum(s.memory for s in chosen.values()))


def _strategies(nodes: Sequence[Node], sizes: dict[str, int], choices: dict[int, list[Spec]],
                candidates: Any) -> dict[int, list[Strategy]]:
    found: dict[int, list[Strategy]] = {}
    live: set[int] = set()  # nodes computed from the inputs (constants' values fold away)
    for node in nodes:
        out = node.output
        is_live = node.op in (PLACEHOLDER, VARIABLE) or any(i.node.id in live for i in node.inputs)
        if is_live:
            live.add(node.id)
        strategy = functools.partial(_strategy, out, is_live, sizes)
        replicated: Spec = (None,) * len(out.shape)
        if node.op in (PLACEHOLDER, VARIABLE):
            found[node.id] = [strategy((), c) for c in choices[node.id]]
        elif node.op == CONSTANT or not node.inputs:
            found[node.id] = [strategy((), replicated)]
        elif node.kind != "op":  # an assignment: its value, as it comes
            found[node.id] = [strategy((s.out,), s.out) for s in found[node.inputs[0].node.id]]
        else:
            found[node.id] = _op_strategies(node, sizes, found, candidates, strategy)
    return found


def _strategy(out: Any, live: bool, sizes: dict[str, int], operands: tuple[Spec, ...],
              spec: Spec, rows: Sequence[Any] = (), flops: float = 0.0) -> Strategy:
    """A strategy of a node with result `out`; a value no input flows into (a constant's)
    costs neither memory nor flops (XLA folds it)."""
    memory = per_device_bytes(out, spec, sizes) if live else 0
    return Strategy(operands, spec, sum(r.nbytes for r in rows), len(rows),
                    flops if live else 0.0, memory)


def _op_strategies(node: Node, sizes: dict[str, int], found: dict[int, list[Strategy]],
                   candidates: Any, strategy: Any) -> list[Strategy]:
    prim = node.op
    assert not isinstance(prim, str)
    options = []  # per operand: its candidates and whatever its producer may give
    for t in node.inputs:
        given = dict.fromkeys(s.out for s in found[t.node.id])
        options.append(list(dict.fromkeys([*given, *candidates(t.shape, sizes)])))
    ndim = len(node.output.shape)
    out: list[Strategy] = []
    for operands in _tuples(node, options):
        try:
            spec = tuple(prim.sharding(list(operands), *node.inputs, **node.params))
        except (ShardingRuleError, ValueError, TypeError):
            continue  # the rule refuses these specs
        spec = spec + (None,) * (ndim - len(spec))
        rows = node_collectives(node, operands, spec, sizes)
        out.append(strategy(operands, spec, rows, node_flops(node, operands, spec, sizes)))
    if not out:  # nothing the rule accepts: everything replicated
        ins = tuple((None,) * len(t.shape) for t in node.inputs)
        out.append(strategy(ins, (None,) * ndim, (), node_flops(node, ins, (None,) * ndim, sizes)))
    return out


def _tuples(node: Node, options: list[list[Spec]]) -> list[tuple[Spec, ...]]:
    """Operand spec tuples to try: all of them when few; else each operand sharded alone (the
    others replicated) and same-shaped operands sharded alike."""
    if math.prod(len(o) for o in options) <= PRODUCT_LIMIT:
        return list(itertools.product(*options))
    plain = tuple(o[0] if not any(o[0]) else (None,) * len(o[0]) for o in options)
    tried = dict.fromkeys([plain])
    for k, opts in enumerate(options):
        for spec in opts:
            tried[(*plain[:k], spec, *plain[k + 1:])] = None
            shape = node.inputs[k].shape
            tried[tuple(spec if t.shape == shape else plain[m]
                        for m, t in enumerate(node.inputs))] = None
    return list(tried)


def _edges(nodes: Sequence[Node], strategies: dict[int, list[Strategy]], sizes: dict[str, int],
           bytes_per_collective: float
           ) -> list[tuple[int, int, int, dict[tuple[Spec, Spec], float]]]:
    """(producer, consumer, operand slot, {(result spec, consumed spec): reshard cost}) for
    each edge where the choice matters."""
    edges = []
    for node in nodes:
        if node.id not in strategies or node.op in (PLACEHOLDER, VARIABLE, CONSTANT):
            continue
        for slot, t in enumerate(node.inputs):
            u = t.node.id
            outs = dict.fromkeys(s.out for s in strategies[u])
            ins = dict.fromkeys(s.operands[slot] for s in strategies[node.id])
            if len(outs) == 1 and len(ins) == 1:
                continue  # no choice: a constant cost
            block = {(c, d): _moved(reshard_rows(t, c, d, sizes, node), bytes_per_collective)
                     for c in outs for d in ins}
            edges.append((u, node.id, slot, block))
    return edges


def _moved(rows: Sequence[Any], bytes_per_collective: float) -> float:
    return sum(r.nbytes + bytes_per_collective for r in rows)


def node_flops(node: Node, ins: Sequence[Spec], out: Spec, sizes: dict[str, int]) -> float:
    """One device's flops for `node`: a contraction's multiply-adds over its shard, else one
    per output element of its shard (reductions: per input element)."""
    def shards(spec: Spec) -> int:
        return math.prod(sizes[a] for e in spec for a in axis_names(e))

    result = node.output
    if node.op_name == "dot_general":
        # the contracted length is split only over the axes both operands split it by (a
        # one-sided split is gathered first)
        (xc, yc), _ = node.params["dimension_numbers"]
        x = node.inputs[0]
        contracted = math.prod(x.shape[i] for i in xc)
        split = math.prod(sizes[a] for i, j in zip(xc, yc)
                          for a in set(axis_names(ins[0][i])) & set(axis_names(ins[1][j])))
        return 2.0 * math.prod(result.shape) * contracted / max(shards(out) * split, 1)
    if node.op_name.startswith("reduce_") and node.inputs:
        return math.prod(node.inputs[0].shape) / max(shards(ins[0]), 1)
    return math.prod(result.shape) / max(shards(out), 1)
