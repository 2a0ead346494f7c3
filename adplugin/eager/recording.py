"""What gradient tapes record: an adplugin graph whose leaves hold concrete values.

Inside a tape, `ap.*` ops on variables, watched arrays and their results are not executed:
they add nodes to the recording's graph and return `EagerTensor`s, values computed on demand.
A computation's structure (its ops, params, and its leaves' shapes and dtypes) keys a cache of
programs: the first time a structure is seen its program is interpreted op by op (no compile
latency), from the second time on it runs as one compiled XLA executable. So a training loop
in tape style costs about what a hand-written `jax.jit` step costs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from adplugin._errors import DerivativeError, message
from adplugin._operator_types import ConcreteValueMethods, OperatorMethods
from adplugin._primitive import Primitive, intercepted, register_symbolic_type
from adplugin.eager.variable import Variable, jax_read_guards
from adplugin.ir.graph import CONSTANT, PLACEHOLDER, Graph, Node, Tensor, needed_nodes
from adplugin.ir.operators import install_operators
from adplugin.lowering.run import evaluate, simplified_program


class Recording:
    """One graph shared by the active (nested) tapes, with the values of its leaves."""

    def __init__(self) -> None:
        self.graph = Graph("tape")
        self.leaf_values: list[Any] = []
        self.leaves: list[Tensor] = []
        self._leaf_of: dict[int, Tensor] = {}  # id(variable or array) -> its leaf
        self._keepalive: list[Any] = []  # objects whose ids key _leaf_of
        self.paused = 0

    def leaf(self, obj: Any) -> Tensor:
        """The leaf standing for a variable's current value or for an array (one per object)."""
        hit = self._leaf_of.get(id(obj))
        if hit is not None:
            return hit
        value = obj.value if isinstance(obj, Variable) else obj
        if isinstance(value, EagerTensor):
            value = value.materialized
        value = value if isinstance(value, jax.Array) else np.asarray(value)
        t = self.graph.placeholder(value.shape, value.dtype,
                                   name=obj.name if isinstance(obj, Variable) else "arg")
        self._leaf_of[id(obj)] = t
        self._keepalive.append(obj)
        self.leaves.append(t)
        self.leaf_values.append(value)
        return t

    def leaf_if_seen(self, obj: Any) -> Tensor | None:
        return self._leaf_of.get(id(obj))

    def to_graph(self, x: Any) -> Any:
        if type(x) is EagerTensor:
            return x.node if x.recording is self else self.leaf(x)
        if isinstance(x, (Variable, jax.Array, np.ndarray)):
            return self.leaf(x)
        return x  # Python scalars and NumPy scalars become constants of the graph

    def record(self, prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> EagerTensor:
        out = self.graph.apply(prim, [self.to_graph(a) for a in args], params)
        return EagerTensor(self, out)

    def structure(self, upto: int) -> tuple[Any, ...]:
        """A hashable key for the first `upto` nodes: ops, params, leaf and constant types."""
        key: list[Any] = []
        for node in self.graph.nodes[:upto]:
            if node.op == PLACEHOLDER:
                key.append((node.output.shape, node.output.dtype))
            elif node.op == CONSTANT:
                v = node.value
                key.append(("c", v.dtype, v.shape, v.tobytes() if v.size <= 16 else id(v)))
            else:
                key.append((node.op, tuple(i.node.id for i in node.inputs),
                            tuple(node.params.items())))
        return tuple(key)

    def evaluate(self, fetches: Sequence[Tensor]) -> list[Any]:
        """Values of recorded tensors, by a cached (and, when seen again, compiled) program."""
        upto = max(t.node.id for t in fetches) + 1
        key = ("values", self.structure(upto), tuple(t.node.id for t in fetches))
        program = cached_program(key, lambda: Program(self.graph, fetches, self.leaves[:]))
        return program(self.leaf_values[:program.n_leaves])


class Program:
    """A function of leaf values computing fixed fetches of a recorded graph.

    The first call interprets the graph node by node when its primitives' eager executables
    (cached per primitive, params and operand types) mostly exist already: no compile
    latency. The second call then starts compiling the simplified graph into one XLA
    executable in the background, and once that is ready every call runs it. When many
    executables would have to be compiled one by one, the first call compiles the whole
    program at once instead, which then costs less.
    """

    def __init__(self, graph: Graph, fetches: Sequence[Tensor], leaves: Sequence[Tensor]):
        self.n_leaves = len(leaves)
        self._graph, self._fetches, self._leaves = graph, list(fetches), list(leaves)
        cut = {t.node.id for t in leaves}
        self._nodes = needed_nodes(graph, fetches, cut)
        self._signatures = {_signature(n) for n in self._nodes if not isinstance(n.op, str)}
        self._compiled: Callable[..., Any] | None = None
        self._pending: Future[Callable[..., Any]] | None = None
        self.uses = 0

    def interpret(self, *values: Any) -> list[Any]:
        env = {t.node.id: v for t, v in zip(self._leaves, values)}
        out = evaluate(self._nodes, self._fetches, env)
        _warm.update(self._signatures)
        return out

    def _compile(self, values: Sequence[Any]) -> Callable[..., Any]:
        program = simplified_program(self._graph, self._fetches, self._leaves, self._nodes)
        return jax.jit(program).lower(*values).compile()

    def __call__(self, values: Sequence[Any]) -> list[Any]:
        self.uses += 1
        if self._compiled is None and self._pending is not None and self._pending.done():
            self._compiled = self._pending.result()
        if self._compiled is not None:
            return self._compiled(*values)
        if self.uses == 1 and self._compile_first():
            self._compiled = self._compile(values)
            return self._compiled(*values)
        if self.uses >= 2 and self._pending is None:
            self._pending = _COMPILER.submit(self._compile, list(values))
        return self.interpret(*values)

    def _compile_first(self) -> bool:
        """Whether compiling the whole program now beats interpreting it: interpreting
        compiles each new (primitive, params, operand types) executable, about 30 ms each;
        compiling the program costs about 1.5 ms per node (measured on a 2-core CPU)."""
        cold = len(self._signatures - _warm)
        return cold * _COMPILE_OP_S > len(self._nodes) * _COMPILE_NODE_S

    def wait_compiled(self) -> None:
        """Block until the compiled executable is in use (for benchmarks and tests)."""
        if self._pending is not None:
            self._compiled = self._pending.result()


def _signature(node: Node) -> Any:
    """What selects a primitive's eager executable: the primitive, params and operand types."""
    return (node.op, tuple(node.params.items()),
            tuple((i.shape, i.dtype) for i in node.inputs))


_warm: set[Any] = set()  # signatures whose eager executables exist
_COMPILE_OP_S = 0.03  # compiling one primitive's eager executable
_COMPILE_NODE_S = 0.0015  # compiling one node as part of a whole program
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adplugin-compile")
_PROGRAMS: dict[Any, Program] = {}
_MAX_PROGRAMS = 512


def cached_program(key: Any, build: Callable[[], Program]) -> Program:
    program = _PROGRAMS.get(key)
    if program is None:
        if len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        program = _PROGRAMS[key] = build()
    return program


# ----------------------------------------------------------------------------------------------
# The active recording
# ----------------------------------------------------------------------------------------------

class _State(threading.local):
    """The recording the active tapes of this thread share, and how many tapes are active."""

    recording: Recording | None = None
    depth = 0


state = _State()


def active_recording() -> Recording | None:
    return state.recording if state.depth else None


class EagerTensor(OperatorMethods, ConcreteValueMethods):
    """The result of an op recorded on a gradient tape; its value is computed on demand.

    Behaves like an array: `ap.*` ops, Python operators, `jnp` functions (`__jax_array__`),
    `float()`, printing and `numpy()` all work.
    """

    __slots__ = ("recording", "node", "_value")
    __array_priority__ = 1000

    def __init__(self, recording: Recording, node: Tensor):
        self.recording, self.node = recording, node
        self._value: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> np.dtype:
        return self.node.dtype

    @property
    def weak_type(self) -> bool:
        return self.node.weak_type

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    @property
    def size(self) -> int:
        return self.node.size

    @property
    def materialized(self) -> jax.Array:
        if self._value is None:
            (self._value,) = self.recording.evaluate([self.node])
        return self._value

    def _set_value(self, value: Any) -> None:
        self._value = value

    def _concrete_value(self) -> jax.Array:
        return self.materialized

    def __jax_array__(self) -> jax.Array:
        _refuse_silent_jax_read(self)
        return self.materialized

    def __repr__(self) -> str:
        return f"EagerTensor({np.asarray(self.materialized)!r})"


# While `ap.function` traces, a reader turns each variable read into a graph placeholder.
variable_readers: list[Callable[[Variable], Any]] = []


def _concrete(x: Any) -> Any:
    if type(x) is EagerTensor:
        return x.materialized
    if isinstance(x, Variable):
        return variable_readers[-1](x) if variable_readers else x.value
    return x


def _bind(prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> Any:
    """Ops on variables and eager tensors: recorded while a tape records, else computed."""
    rec = active_recording()
    if rec is None:
        owners = [a.recording for a in args if type(a) is EagerTensor]
        rec = owners[0] if owners else None
    if rec is None or rec.paused:
        values = [_concrete(a) for a in args]
        if variable_readers:  # reads became graph placeholders: add a node
            return prim.bind(*values, **params)
        return prim.jax_primitive.bind(*values, **params)  # watched arrays are not re-hooked
    return rec.record(prim, args, params)


# A pytree of its value, so JAX functions (jnp.sum(y), jax.jit(f)(y)) take eager tensors.
def _refuse_silent_jax_read(x: Any) -> None:
    """A JAX function reading a value the active tape differentiates would compute outside
    the tape, and the gradient through it would silently be lost: refuse instead."""
    rec = active_recording()
    if rec is None or rec.paused:
        return
    if isinstance(x, Variable) and not x.trainable:
        return
    if isinstance(x, EagerTensor) and x.recording is not rec:
        return
    name = x.name if isinstance(x, Variable) else "an eager tensor"
    raise DerivativeError(message(
        "GradientTape", "a JAX function (jax.numpy, or a jax.Array's operator) read a value "
        "the tape records, so the tape would not see that computation",
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
install_operators(EagerTensor)
install_operators(Variable)


def watch_array(rec: Recording, array: Any) -> Tensor:
    """Make later ops on this very array object record on `rec`."""
    leaf = rec.leaf(array)
    intercepted[id(array)] = _bind
    return leaf


def unwatch_arrays(rec: Recording) -> None:
    for obj in rec._keepalive:
        intercepted.pop(id(obj), None)
