"""`simplify`: one pass of DCE, CSE, constant folding and algebraic identities.

Pure: it builds a new graph holding only what `outputs` need, and returns it with the map from
old node ids to new tensors. Uniform values ("splats": a constant of one repeated value, or a
broadcast of one) are tracked without materializing them, so `x * ones` folds to `x` whatever
the shape.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from adplugin._params import params_key
from adplugin._primitive import Primitive, ShapeDtype, get_primitive
from adplugin.ir.graph import (
    CONSTANT,
    PLACEHOLDER,
    Graph,
    Node,
    Tensor,
    needed_nodes,
    no_cyclic_gc,
)
from adplugin.ir.variables import ASSIGN, VARIABLE

_FOLD_LIMIT = 1024  # largest constant (in elements) that folding may create


def _np_broadcast_in_dim(x: np.ndarray, *, shape: tuple[int, ...],
                         broadcast_dimensions: tuple[int, ...]) -> np.ndarray:
    expanded = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        expanded[d] = x.shape[i]
    return np.broadcast_to(x.reshape(expanded), shape)


def _np_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """XLA's division: IEEE for floats; for integers the quotient rounded toward zero, with
    XLA's answers where C's division is undefined (its CPU and GPU emitters): x / 0 is -1 (all
    bits set: the largest unsigned value), and INT_MIN / -1 is INT_MIN. Folding them here also
    keeps them from XLA's own constant folder, which traps (SIGFPE) on a constant x / 0."""
    dtype = np.dtype(x.dtype)
    if dtype.kind not in "iu":
        return np.divide(x, y).astype(dtype)
    x, y = np.broadcast_arrays(x, y)
    zero = y == 0
    overflow = (x == np.iinfo(dtype).min) & (y == -1) if dtype.kind == "i" else zero & False
    safe = np.where(zero | overflow, 1, y).astype(dtype)
    q = np.floor_divide(x, safe)  # exact; floor differs from truncation when the signs differ
    q = np.where((q < 0) & (q * safe != x), q + 1, q)
    q = np.where(overflow, x, q)
    return np.where(zero, np.array(-1).astype(dtype), q).astype(dtype)


def _np_convert(x: np.ndarray, *, new_dtype: Any, weak_type: bool) -> np.ndarray | None:
    """`astype`, where it agrees with XLA: float to integer is folded only for finite values
    inside the target's range (XLA's NaN, infinity and overflow results are its own)."""
    out = np.dtype(new_dtype)
    if np.dtype(x.dtype).kind == "f" and out.kind in "iu":
        info = np.iinfo(out)
        wide = x.astype(np.float64)
        if not np.all(np.isfinite(wide)) or np.any(np.trunc(wide) < info.min) or \
                np.any(np.trunc(wide) > info.max):
            return None
    return x.astype(out)


# primitives cheap to fold in NumPy (each gives the same dtype as its primitive would, or None
# where NumPy and XLA may disagree: then the node stays and XLA computes it)
_NUMPY_FOLD: dict[str, Callable[..., np.ndarray | None]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "neg": np.negative,
    "div": _np_div,
    "broadcast_in_dim": _np_broadcast_in_dim,
    "reshape": lambda x, *, new_sizes: x.reshape(new_sizes),
    "convert_element_type": _np_convert,
    "transpose": lambda x, *, permutation: np.transpose(x, permutation),
}


_IDENTITY_OPS = {"mul", "add", "sub", "div", "neg", "broadcast_in_dim", "reshape",
                 "convert_element_type", "transpose", "integer_pow", "select"}


class _Simplifier:
    def __init__(self, name: str):
        self.graph = Graph(name)
        self.splat: dict[int, Any] = {}  # new node id -> the one value the tensor holds
        self.cse: dict[Any, Tensor] = {}

    def constant(self, value: np.ndarray, weak: bool) -> Tensor:
        key = ("const", value.dtype.str, value.shape, value.tobytes()) if value.size <= 64 else None
        if key is not None and key in self.cse:
            return self.cse[key]
        t = self.graph.constant(value.item() if weak and value.ndim == 0 else value)
        if value.size and np.all(value == value.flat[0]):
            self.splat[t.node.id] = value.flat[0]
        if key is not None:
            self.cse[key] = t
        return t

    def value_of(self, t: Tensor) -> Any:
        return self.splat.get(t.node.id)

    def apply(self, node: Node, inputs: list[Tensor]) -> Tensor:
        prim = node.op
        assert isinstance(prim, Primitive)
        same = self._identity(prim.name, inputs, node)
        if same is not None:
            return same
        folded = self._fold(prim.name, inputs, node)
        if folded is not None:
            return folded
        key = (prim.name, tuple(i.node.id for i in inputs), params_key(node.params))
        hit = self.cse.get(key)
        if hit is not None:
            return hit
        t = self.graph._add(prim, tuple(inputs), node.params, _aval(node.output),
                            role=node.role)
        self.cse[key] = t
        if prim.name == "broadcast_in_dim" and self.value_of(inputs[0]) is not None:
            self.splat[t.node.id] = self.value_of(inputs[0])
        return t

    def constrain(self, t: Tensor, sharding: Any) -> Tensor:
        """`t` under a sharding constraint (a `shard` node, shared between equal requests)."""
        key = ("shard", t.node.id, params_key({"sharding": sharding}))
        hit = self.cse.get(key)
        if hit is None:
            hit = self.cse[key] = self.graph._add(get_primitive("shard"), (t,),
                                                  {"sharding": sharding}, _aval(t))
        return hit

    def _identity(self, name: str, xs: list[Tensor], node: Node) -> Tensor | None:
        if name not in _IDENTITY_OPS:
            return None
        out = node.output
        same_type = [x for x in xs if x.shape == out.shape and x.dtype == out.dtype]
        v = [self.value_of(x) for x in xs]
        if name == "mul" and len(same_type) == 2:
            if v[1] == 1:
                return xs[0]
            if v[0] == 1:
                return xs[1]
        if name == "add" and len(same_type) == 2:
            if v[1] == 0:
                return xs[0]
            if v[0] == 0:
                return xs[1]
        if name in ("sub", "div") and len(same_type) == 2 and v[1] == (0 if name == "sub" else 1):
            return xs[0]
        if name == "neg" and xs[0].node.op_name == "neg":
            return xs[0].node.inputs[0]
        if name in ("broadcast_in_dim", "reshape", "convert_element_type", "transpose") and \
                same_type and (name != "transpose" or
                               node.params["permutation"] == tuple(range(out.ndim))):
            return xs[0]
        if name == "integer_pow" and node.params["y"] == 1:
            return xs[0]
        if name == "select" and xs[1] is xs[2]:
            return xs[1]
        return None

    def _fold(self, name: str, xs: list[Tensor], node: Node) -> Tensor | None:
        fold = _NUMPY_FOLD.get(name)
        if fold is None or node.output.size > _FOLD_LIMIT and not _integer_div(name, node):
            return None
        if not all(x.node.op == CONSTANT for x in xs):
            return None
        with np.errstate(all="ignore"):  # IEEE results (inf, nan) as XLA gives them, silently
            value = fold(*[x.node.value for x in xs], **node.params)
        if value is None:
            return None
        return self.constant(np.asarray(value, node.output.dtype), weak=False)


def _integer_div(name: str, node: Node) -> bool:
    """Integer divisions of constants are folded whatever their size (XLA's constant folder
    would trap on a division by zero among them)."""
    return name == "div" and np.dtype(node.output.dtype).kind in "iu"


def _aval(t: Tensor) -> ShapeDtype:
    return ShapeDtype(t.shape, t.dtype, t.weak_type)


def simplify(graph: Graph, outputs: Sequence[Tensor], cut: Collection[int] = (),
             nodes: Sequence[Node] | None = None) -> tuple[Graph, dict[int, Tensor]]:
    """A new graph computing `outputs`, simplified; tensors in `cut` become its placeholders.

    Returns the graph and the map from the old graph's node ids to the new graph's tensors.
    Nothing upstream of a cut tensor is needed (its value comes from outside), so a graph
    fed at an intermediate tensor never asks for the placeholders behind it.
    """
    nodes = needed_nodes(graph, outputs, cut) if nodes is None else nodes
    with no_cyclic_gc():
        return _simplify(graph, nodes, cut)


def _simplify(graph: Graph, nodes: Sequence[Node], cut: Collection[int]
              ) -> tuple[Graph, dict[int, Tensor]]:
    s = _Simplifier(f"{graph.name}.simplified")
    mapping: dict[int, Tensor] = {}
    for node in nodes:
        first_new = len(s.graph.nodes)
        if node.id in cut or node.op in (PLACEHOLDER, VARIABLE):
            # variable reads are inputs too: the runner feeds each its variable's value
            t = s.graph.placeholder(node.output.shape, node.output.dtype,
                                    node.name or f"in{node.id}")
        elif node.op == CONSTANT:
            t = s.constant(node.value, node.output.weak_type)
        elif node.op == ASSIGN:  # gives the assigned value; the runner stores it
            t = mapping[node.inputs[0].node.id]
        elif node.sharding is None and node.operand_shardings is None:
            t = s.apply(node, [mapping[i.node.id] for i in node.inputs])
        else:  # a sharding plan's constraints, as sharding nodes around the op
            ins = [mapping[i.node.id] for i in node.inputs]
            moves = node.operand_shardings or (None,) * len(ins)
            t = s.apply(node, [x if m is None else s.constrain(x, m) for x, m in zip(ins, moves)])
            t = t if node.sharding is None else s.constrain(t, node.sharding)
        mapping[node.id] = t
        for made in s.graph.nodes[first_new:]:  # the copies keep the line that built the node
            made.traceback = node.traceback
        if node.device is not None or node.colocate is not None:
            carry_request(node, t.node, mapping)
    return s.graph, mapping


def carry_request(old: Node, new: Node, mapping: dict[int, Tensor]) -> None:
    """Give a copied node the device request and colocation of the node it copies (the
    colocation target remapped to its copy); a node that already has a request keeps it."""
    if new.device is not None or new.colocate is not None:
        return
    new.device = old.device
    target = mapping.get(old.colocate) if old.colocate is not None else None
    new.colocate = target.node.id if target is not None and target.node is not new else None


def op_count(graph: Graph, outputs: Sequence[Tensor] | None = None) -> int:
    """Primitive applications (placeholders and constants not counted)."""
    return sum(1 for n in needed_nodes(graph, outputs) if not isinstance(n.op, str))
