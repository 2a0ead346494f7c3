"""What gradient tapes record: an adplugin graph whose leaves hold concrete values.

Inside a tape, `ap.*` ops on watched values (variables, watched arrays and constants, and
results of recorded ops) are not executed: they add nodes to the recording's graph and return
`EagerTensor`s, values computed on demand. Every entry recorded extends an interned structure
prefix (`structure.Prefix`), so the key of everything recorded so far costs O(1): programs
computing values and gradients are cached by it, interpreted op by op the first time a
structure is seen and compiled into one XLA executable from then on (`program.Program`).
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import DerivativeError, message
from adplugin._operator_types import ConcreteValueMethods, OperatorMethods
from adplugin._params import array_key, params_key
from adplugin._primitive import (
    ZERO_DERIVATIVE,
    Primitive,
    register_scope_taker,
    register_symbolic_type,
)
from adplugin.eager import structure
from adplugin.eager.program import INTERPRET_LIMIT, Program, cached_program
from adplugin.eager.variable import Variable, jax_read_guards, plain_value
from adplugin.ir.graph import CONSTANT, PLACEHOLDER, Graph, Tensor
from adplugin.ir.operators import install_operators
from adplugin.lowering.run import evaluate
from adplugin.placement.devices import default_device
from adplugin.placement.execution import interpret, value_device


class Recording:
    """One graph shared by the active (nested) tapes, with the values of its leaves.

    Leaves stand for values that come from outside: each version of a variable read, each
    watched array or constant (tracked by identity and kept alive here, so an `id()` cannot be
    reused while it keys anything), and other arrays ops were given.
    """

    def __init__(self) -> None:
        self.graph = Graph("tape")
        self.leaves: list[Tensor] = []
        self.values: dict[int, Any] = {}  # node id -> concrete value (leaves, materialized)
        self._leaf_of: dict[int, tuple[Any, int, Tensor]] = {}  # id(obj) -> (obj, version, leaf)
        self.variable_leaves: dict[Variable, list[Tensor]] = {}  # every version read
        self.active_tapes: list[Any] = []  # tapes recording now, outermost first
        self.tapes: list[Any] = []  # tapes that ever joined (their ordinal is the index)
        self.prefix = structure.ROOT  # the interned structure of everything recorded
        self.prefix_at: dict[int, structure.Prefix] = {}  # node id -> prefix right after it
        self.sidx: dict[int, int] = {}  # node id -> its position in the structure
        self._registered_upto = 0  # nodes below this index are registered (or skipped)
        # node id -> the user's "file:line" that recorded it, kept for the nodes that explain a
        # None gradient (stop_gradient, integer outputs, arrays entering unwatched)
        self.where: dict[int, str] = {}
        self.lock = threading.RLock()
        # whether values are computed by the placer (a node asks for a device, or a leaf's
        # value is committed to one): then each op runs on the device placement gives it
        self.placed = False

    # --- structure ------------------------------------------------------------------------------

    def event(self, *entry: Any) -> None:
        """Add a tape event (enter, exit, watch, reset) to the structure."""
        self.prefix = self.prefix.extend(entry)

    def register_new_nodes(self) -> None:
        """Extend the structure with the nodes added since the last call."""
        nodes = self.graph.nodes
        for node in nodes[self._registered_upto:]:
            self.sidx[node.id] = len(self.sidx)
            self.prefix = self.prefix.extend(self._entry(node))
            self.prefix_at[node.id] = self.prefix
            if node.op == CONSTANT:
                self.values[node.id] = node.value
            elif node.device is not None or node.colocate is not None:
                self.placed = True
        self._registered_upto = len(nodes)

    def skip_new_nodes(self) -> None:
        """Leave the nodes added since the last registration out of the structure (nodes of a
        compiled gradient: never exposed, so later entries never refer to them)."""
        self._registered_upto = len(self.graph.nodes)

    def _entry(self, node: Any) -> Any:
        out = node.output
        if node.op == PLACEHOLDER:
            return ("leaf", out.shape, out.dtype.str, out.weak_type, node.sharding)
        if node.op == CONSTANT:
            return array_key(node.value, out.weak_type)
        params: Any = ()
        if node.params:
            try:
                params = params_key(node.params)
            except TypeError:
                params = structure.Unkeyable()
        sidx = self.sidx
        return (node.op, tuple([sidx[i.node.id] for i in node.inputs]), params)

    # --- leaves ---------------------------------------------------------------------------------

    def _new_leaf(self, value: Any, name: str, sharding: Any = None) -> Tensor:
        t = self.graph.placeholder(np.shape(value), value.dtype, name=name)
        t.node.sharding = sharding  # a sharded variable's: its gradient is sharded alike
        if name == "arg":
            self.where[t.node.id] = user_site()
        self.leaves.append(t)
        self.values[t.node.id] = value
        if not self.placed and value_device(value) not in (None, default_device()):
            self.placed = True  # a value committed to another device: ops go where it is
        self.register_new_nodes()
        return t

    def leaf(self, obj: Any) -> Tensor:
        """The leaf standing for an array, constant or eager tensor (one per object)."""
        hit = self._leaf_of.get(id(obj))
        if hit is not None:
            return hit[2]
        value = obj.materialized if type(obj) is EagerTensor else obj
        value = value if isinstance(value, jax.Array) or jx.is_tracer(value) else np.asarray(value)
        t = self._new_leaf(value, "arg")
        self._leaf_of[id(obj)] = (obj, 0, t)
        return t

    def leaf_if_seen(self, obj: Any) -> Tensor | None:
        hit = self._leaf_of.get(id(obj))
        return None if hit is None else hit[2]

    def tracks(self, obj: Any) -> bool:
        """Whether `obj` (an array or eager constant, by identity) is a leaf here."""
        hit = self._leaf_of.get(id(obj))
        return hit is not None and hit[0] is obj

    def variable_leaf(self, v: Variable) -> Tensor:
        """The leaf for the current version of `v` (a new one after each assignment)."""
        hit = self._leaf_of.get(id(v))
        if hit is not None and hit[1] == v._version:
            t = hit[2]
        else:
            t = self._new_leaf(v.value, v.name, v.sharding)
            self._leaf_of[id(v)] = (v, v._version, t)
            self.variable_leaves.setdefault(v, []).append(t)
        for tape in self.active_tapes:
            tape._on_variable_read(v, t)
        return t

    def watches_variable(self, v: Variable) -> bool:
        return any(tape._watches_variable(v) for tape in self.active_tapes)

    def leaves_before(self, node_id: int) -> list[Tensor]:
        """The leaves created before node `node_id` (a program's inputs, in order)."""
        ids = [t.node.id for t in self.leaves]
        return self.leaves[:bisect.bisect_left(ids, node_id)]

    def source_nodes(self, source: Any) -> list[Tensor]:
        """The recorded nodes a gradient source stands for (every version read of a variable,
        a recorded value's node, a tracked array's leaf)."""
        if isinstance(source, Variable):
            return list(self.variable_leaves.get(source, ()))
        if type(source) is EagerTensor and source.recording is self and source.node is not None:
            return [source.node]
        leaf = self.leaf_if_seen(source)
        return [leaf] if leaf is not None and self.tracks(source) else []

    def target_node(self, target: Any) -> Tensor | None:
        """The recorded node a gradient target stands for (a variable: its latest read)."""
        if type(target) is EagerTensor and target.recording is self and target.node is not None:
            return target.node
        if isinstance(target, Variable):
            leaves = self.variable_leaves.get(target)
            return leaves[-1] if leaves else None
        return self.leaf_if_seen(target) if self.tracks(target) else None

    # --- recording ------------------------------------------------------------------------------

    def to_graph(self, x: Any) -> Any:
        if type(x) is EagerTensor:
            return x.node if x.recording is self else self.leaf(x)
        if isinstance(x, Variable):
            return self.variable_leaf(x)
        if isinstance(x, (jax.Array, np.ndarray)) or jx.is_tracer(x):
            return self.leaf(x)
        return x  # Python scalars and NumPy scalars become constants of the graph

    def record(self, prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> EagerTensor:
        with self.lock:
            inputs = [self.to_graph(a) for a in args]
            out = self.graph.apply(prim, inputs, params)
            if prim.jvp is ZERO_DERIVATIVE or out.dtype.kind not in "fc":
                self.where[out.node.id] = user_site()  # a cut in derivative paths: keep where
            self.register_new_nodes()
            return EagerTensor(self, out)

    def records(self, args: Sequence[Any]) -> bool:
        """Whether an op on `args` is recorded: some argument is a recorded value, a tracked
        array or constant, or a variable an active tape watches."""
        for a in args:
            if type(a) is EagerTensor:
                if a.recording is self or self.tracks(a):
                    return True
            elif isinstance(a, Variable):
                if self.watches_variable(a) or self.tracks(a):
                    return True
            elif self.tracks(a):
                return True
        return False

    # --- values ---------------------------------------------------------------------------------

    def evaluate(self, fetches: Sequence[Tensor]) -> list[Any]:
        """Values of recorded tensors. A few ops past values already known are interpreted
        (so reading a value after each op costs O(1) per op); a larger computation runs as a
        program cached by structure (compiled when seen again)."""
        with self.lock:
            if len(fetches) == 1:
                value = self._one_op(fetches[0].node)
                if value is not None:
                    return [value]
            missing = self._missing(fetches)
            if self.placed and not self._traced():  # each op on its device
                return interpret(self.graph, missing, fetches, self.values)
            if len(missing) <= INTERPRET_LIMIT or self._traced():
                return evaluate(missing, fetches, self.values)
            upto = max(t.node.id for t in fetches)
            key = ("values", self.prefix_at[upto], tuple(self.sidx[t.node.id] for t in fetches),
                   jx.config_key())
            leaves = self.leaves_before(upto + 1)
            program = cached_program(key, lambda: Program(self.graph, fetches, leaves))
            out = program([self.values[t.node.id] for t in leaves[:program.n_feeds]])
            for t, v in zip(fetches, out):
                self.values[t.node.id] = v
            return out

    def _one_op(self, node: Any) -> Any:
        """The value of an op whose inputs are all known, computed now (the common read after
        each op), or None when that does not apply."""
        values = self.values
        if node.id in values:
            return values[node.id]
        if node.kind != "op" or self.placed or not jx.at_top_level():
            return None
        try:
            args = [values[i.node.id] for i in node.inputs]
        except KeyError:
            return None
        if any(jx.is_tracer(a) for a in args):
            return None
        value = values[node.id] = node.op.jax_primitive.impl(*args, **node.params)
        return value

    def _missing(self, fetches: Sequence[Tensor]) -> list[Any]:
        """Op nodes the fetches need whose values are not known yet, in graph order."""
        seen: set[int] = set()
        stack = [t.node for t in fetches]
        while stack:
            node = stack.pop()
            if node.id in seen or node.id in self.values:
                continue
            seen.add(node.id)
            stack.extend(i.node for i in node.inputs)
        return sorted((self.graph.nodes[i] for i in seen), key=lambda n: n.id)

    def _traced(self) -> bool:
        """Whether leaf values are JAX tracers (recording inside `ap.function`'s trace)."""
        return bool(self.leaves) and jx.is_tracer(self.values[self.leaves[-1].node.id])


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_site() -> str:
    """"file:line" of the innermost frame outside adplugin (where the user's code called)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class EagerTensor(OperatorMethods, ConcreteValueMethods):
    """A value of eager mode: the result of an op a tape recorded (computed on demand), or a
    concrete constant (`ap.constant` outside graphs, as `tf.constant` in TensorFlow 2).

    Behaves like an array: `ap.*` ops, Python operators, `jnp` functions (`__jax_array__`),
    `float()`, printing and `numpy()` all work; a tape that watches it records ops on it.
    """

    __slots__ = ("recording", "node", "_value", "__weakref__")
    __array_priority__ = 1000

    def __init__(self, recording: Recording | None, node: Tensor | None, value: Any = None):
        self.recording, self.node = recording, node
        self._value: Any = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape if self.node is not None else tuple(self._value.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.node.dtype if self.node is not None else np.dtype(self._value.dtype)

    @property
    def weak_type(self) -> bool:
        if self.node is not None:
            return self.node.weak_type
        return jx.is_weakly_typed(self._value)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def materialized(self) -> Any:
        if self._value is None:
            assert self.recording is not None and self.node is not None
            (self._value,) = self.recording.evaluate([self.node])
        return self._value

    def _concrete_value(self) -> Any:
        return self.materialized

    def __jax_array__(self) -> Any:
        _refuse_silent_jax_read(self)
        return self.materialized

    def __repr__(self) -> str:
        value = self.materialized
        if jx.is_tracer(value):
            return f"EagerTensor(traced {self.dtype.name}{list(self.shape)})"
        return f"EagerTensor({np.asarray(value)!r})"


def eager_constant(value: Any, dtype: Any = None) -> EagerTensor:
    """A concrete eager tensor (`ap.constant` / `ap.convert_to_tensor` outside graphs)."""
    if isinstance(value, EagerTensor) and dtype is None:
        return value
    value = plain_value(value)
    if dtype is None and isinstance(value, (bool, int, float, complex)):
        array = jnp.asarray(value)  # weakly typed, as a Python scalar is
    else:
        array = jnp.asarray(value, dtype=None if dtype is None else jx.canonical_dtype(dtype))
    scope = _context.effective()
    if scope is not None and scope.device is not None:  # made inside ap.device(...): there
        from adplugin.placement.devices import resolve
        from adplugin.placement.requests import put, sharding_of

        array = put(array, sharding_of(resolve(scope.device, op="constant")))
    return EagerTensor(None, None, array)


# ----------------------------------------------------------------------------------------------
# Dispatch: ops on variables, eager tensors and watched arrays
# ----------------------------------------------------------------------------------------------

def _recording_of(scope: Any) -> Recording | None:
    if scope is None or scope.paused:
        return None
    rec: Recording | None = scope.recording
    return rec


def _plain(x: Any, graph: Graph | None = None) -> Any:
    """`x` as the op takes it: in a graph a variable is its read node, else its value."""
    if graph is not None and isinstance(x, Variable):
        return graph_read(graph, x)
    return plain_value(x)


def graph_read(graph: Graph, v: Variable) -> Tensor:
    from adplugin.ir.variables import read_node

    return read_node(graph, v)


def _bind(prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> Any:
    """Ops on variables and eager tensors: recorded when a tape watches them; read nodes in a
    graph being built; otherwise computed now."""
    scope = _context.effective()
    graph = next((a.graph for a in args if type(a) is Tensor), None)
    if graph is None and scope is not None:
        graph = scope.graph
    if graph is not None:  # a graph op: variables are read when the graph runs
        return prim.bind(*[_plain(a, graph) for a in args], **params)
    if scope is None:
        _refuse_reads_lost_to_jax(args)
    rec = _recording_of(scope)
    if rec is not None and rec.records(args):
        return rec.record(prim, args, params)
    out = prim.bind(*[_plain(a) for a in args], **params)
    in_function = scope is not None and scope.frame is not None
    if any(type(a) is EagerTensor for a in args) and (in_function or not jx.is_tracer(out)):
        return EagerTensor(None, None, out)  # a tensor in, a tensor out (TensorFlow 2)
    return out


def _recording_takes(scope: Any, args: Sequence[Any]) -> Any:
    """Ops a recording takes though no argument is symbolic: ops on arrays it tracks (watched
    by identity), and ops on NumPy constants alone (the wrappers broadcasting a Python scalar
    to a recorded operand's shape): recording them costs no device dispatch, and they are
    constants of the structure."""
    rec = _recording_of(scope)
    if rec is None:
        return None
    if all(isinstance(a, _NUMPY_CONSTANT) for a in args) and any(
            isinstance(a, (np.generic, np.ndarray)) for a in args):
        return rec.record
    if rec._leaf_of:
        for a in args:
            if rec.tracks(a):
                return rec.record
    return None


_NUMPY_CONSTANT = (bool, int, float, complex, np.generic, np.ndarray)


def read_variable(v: Variable) -> Any:
    """`v.read_value()`: a recorded read, a graph read node, or the (traced) value."""
    scope = _context.effective()
    if scope is not None and scope.graph is not None:
        return graph_read(scope.graph, v)
    rec = _recording_of(scope)
    if rec is not None and (rec.watches_variable(v) or rec.tracks(v)):
        with rec.lock:
            return EagerTensor(rec, rec.variable_leaf(v))
    return v.value


def _refuse_reads_lost_to_jax(args: Sequence[Any]) -> None:
    for a in args:
        if type(a) is EagerTensor or isinstance(a, Variable):
            _refuse_silent_jax_read(a)


def _refuse_silent_jax_read(x: Any) -> None:
    """A JAX function reading a value an active tape differentiates would compute outside the
    tape, and the gradient through it would silently be lost: refuse instead."""
    scope = _context.current()
    rec = _recording_of(scope)
    if rec is None:
        return
    if isinstance(x, Variable):
        if not (rec.watches_variable(x) or rec.tracks(x)):
            return
    elif type(x) is EagerTensor and x.recording is not rec and not rec.tracks(x):
        return
    name = x.name if isinstance(x, Variable) else "an eager tensor"
    raise DerivativeError(message(
        "GradientTape", "a JAX function (jax.numpy, jax.jit, or a jax.Array's operator) read "
        "a value the tape records, so the tape would not see that computation",
        f"{name} read by JAX inside `with GradientTape()`", "ap.* ops on recorded values",
        "use the ap.* op (ap.multiply(a, v) rather than jnp_array * v or jnp.multiply), or "
        "read the plain value with v.value / inside tape.stop_recording() if it must not "
        "be differentiated"))


def _flatten_eager(t: EagerTensor) -> tuple[tuple[Any], None]:
    _refuse_silent_jax_read(t)
    return (t.materialized,), None


jax_read_guards.append(_refuse_silent_jax_read)
jax.tree_util.register_pytree_node(EagerTensor, _flatten_eager, lambda _, kids: kids[0])
register_symbolic_type(EagerTensor, _bind, priority=2)
register_symbolic_type(Variable, _bind, priority=2)
register_scope_taker(_recording_takes)
install_operators(EagerTensor)
install_operators(Variable)
