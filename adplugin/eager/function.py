"""`ap.function`: compile a whole Python step (tapes, gradients, optimizer updates, variable
assignments) into one XLA program, traced once per input signature.

The function is made pure and handed to `jax.jit`: every piece of mutable state it touches
(variables, optimizer slots: `Cell`s) becomes an input of the compiled program, and every one
it writes becomes an output, stored back after each call. So every call reads the current
values and applies its updates; inside a call, a read after an assignment sees the new value.

Which cells a function touches is found by tracing it: a trace that meets a cell it was not
given stops (before anything is compiled), and the function is traced again with that cell as
an input (TensorFlow's tf.function captures variables the same way). State the function
creates while it traces (an optimizer's slots on the first step) gets its initial value from
the traced program itself: that first program runs once (so the first call applies its update
too), stores the new state, and the next call traces again with the state as inputs.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import message
from adplugin._lru import LRU
from adplugin.eager.recording import EagerTensor
from adplugin.eager.variable import Cell, Variable, plain_value
from adplugin.placement.devices import resolve
from adplugin.placement.requests import put, sharding_of
from adplugin.sharding.mesh import constrain

_DYNAMIC = object()  # marks, among arguments and results, the places of traced arrays


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, EagerTensor)) or jx.is_tracer(x)


class _Retrace(Exception):
    """A trace met cells it was not given: trace again with them as inputs."""

    def __init__(self, cells: list[Cell]):
        super().__init__(f"{len(cells)} more cells")
        self.cells = cells


class Frame:
    """The values of cells inside one trace of a function (the scope's `frame`).

    `values` holds each cell's value in the trace: its input, then whatever was written;
    `discovered` the cells met that are not inputs (read at their stored value); `created`
    the cells made inside the trace from traced values (their initial value is computed by
    the program).
    """

    def __init__(self, cells: list[Cell], values: list[Any]):
        self.values: dict[Cell, Any] = dict(zip(cells, values))
        self.inputs = frozenset(cells)
        self.written: dict[Cell, None] = {}
        self.discovered: dict[Cell, None] = {}
        self.created: dict[Cell, None] = {}

    def read(self, cell: Cell) -> Any:
        if cell in self.values:
            return self.values[cell]
        self.discovered[cell] = None  # go on with its current value; traced again after
        return cell._stored

    def write(self, cell: Cell, value: Any) -> None:
        if cell not in self.values:
            self.discovered[cell] = None
        old = self.values.get(cell, cell._stored)
        value = jax.tree.map(lambda n, o: jnp.asarray(n, dtype=o.dtype), value, old)
        sharding = getattr(cell, "sharding", None)
        if sharding is not None:  # the program gives it back split as the variable is
            constrained = getattr(cell, "constrained", None)  # optimizer state: some leaves
            value = constrained(value) if constrained else constrain(value, sharding)
        self.values[cell] = value
        self.written[cell] = None

    def create(self, cell: Cell, value: Any) -> None:
        self.created[cell] = None
        self.values[cell] = value

    def stored_after(self) -> list[Cell]:
        """The cells whose values the program returns: those written, and those created."""
        return [*self.written, *(c for c in self.created if c not in self.written)]


class _Trace:
    """One input signature's compiled program and the cells it takes."""

    def __init__(self, owner: Function, tree: Any, statics: list[Any],
                 known: list[weakref.ref[Cell]]):
        # statics: the static arguments, with _DYNAMIC where the traced arrays go; known: the
        # cells other signatures' traces met (likely these too: saves a retrace)
        self.owner, self.tree, self.statics = owner, tree, statics
        self.cells: list[weakref.ref[Cell]] = [r for r in known if r() is not None]
        self.stored: list[weakref.ref[Cell]] = []  # the cells the program's outputs go to
        self.pending: list[Cell] = []  # cells to take as inputs from the next call on
        self.out_tree: Any = None
        self.out_statics: list[Any] = []
        self._jitted = jax.jit(self._pure)
        self._lock = threading.Lock()  # one call at a time: calls read and write the cells

    def _pure(self, cell_values: list[Any], dynamic: list[Any]) -> Any:
        cells = self._live_cells()
        frame = Frame(cells, cell_values)
        # traced arrays arrive as eager tensors, as tf.function hands Tensors: their Python
        # operators are adplugin's, so a tape inside records them
        tensors = [EagerTensor(None, None, d) for d in dynamic]
        args = jax.tree.unflatten(self.tree, _merge(self.statics, tensors))
        self.owner.tracing_count += 1
        with _context.scoped(frame, frame=frame, graph=None, recording=None, paused=False):
            out = self.owner.fn(*args)
        if frame.discovered and not frame.created:
            raise _Retrace(list(frame.discovered))
        # cells created here hold traced values: this program runs once to give them their
        # first values; the next call traces again with them (and any discovered) as inputs
        self.pending = [*frame.discovered, *frame.created]
        stored = frame.stored_after()
        self.stored = [weakref.ref(c) for c in stored]
        flat, self.out_tree = jax.tree.flatten(out, is_leaf=_is_output_leaf)
        outs = [plain_value(x) for x in flat]
        self.out_statics = [_DYNAMIC if _is_dynamic_out(x) else x for x in outs]
        return [x for x in outs if _is_dynamic_out(x)], [frame.values[c] for c in stored]

    def _live_cells(self) -> list[Cell]:
        cells = [r() for r in self.cells]
        if any(c is None for c in cells):
            raise RuntimeError(message(
                "ap.function", "a variable the compiled function uses was deleted",
                "a dead variable", "the variables alive while the function is used",
                "keep the variables referenced, or make a new ap.function"))
        return cells  # type: ignore[return-value]

    def _take(self, more: list[Cell]) -> None:
        """Trace again with `more` cells as inputs."""
        known = {r() for r in self.cells}
        new = [weakref.ref(c) for c in more if c not in known]
        self.cells += new
        for ref in new:  # other signatures' traces start with them
            self.owner._known.setdefault(ref, ref)
        self.pending = []
        self._jitted = jax.jit(self._pure)

    def __call__(self, dynamic: list[Any], device: Any = None) -> Any:
        with self._lock:
            return self._call(dynamic, device)

    def _call(self, dynamic: list[Any], device: Any) -> Any:
        while True:
            cells = self._live_cells()
            stored = [c._stored for c in cells]
            if device is not None:  # called inside ap.device(...): everything runs there
                stored, dynamic = jax.tree.map(functools.partial(put, sharding=sharding_of(
                    device)), (stored, dynamic))
            try:
                outs, values = self._jitted(stored, dynamic)
                break
            except _Retrace as more:
                self._take(more.cells)
        for ref, value in zip(self.stored, values):
            cell = ref()
            if cell is not None:
                if device is not None:  # state computed elsewhere goes back where it lives
                    value = jax.tree.map(_back_home, cell._stored, value)
                cell._write(value)
        if self.pending:
            self._take(self.pending)
        it = iter(outs)
        return jax.tree.unflatten(self.out_tree, [next(it) if s is _DYNAMIC else s
                                                  for s in self.out_statics])


class Function:
    """A Python function of `ap.*` ops (tapes, optimizers and assignments included), compiled
    per input signature: the arguments' structure with each array's shape and dtype (other
    arguments by value). Inside an active gradient tape or a graph being built it runs op by
    op instead, so the tape or graph records it; inside a JAX transformation it is inlined.

    `tracing_count` counts the traces of the Python function (TensorFlow's
    `experimental_get_tracing_count()`).
    """

    def __init__(self, fn: Callable[..., Any], max_traces: int = 64):
        self.fn = fn
        self.tracing_count = 0
        self._traces: LRU[_Trace] = LRU(max_traces)
        self._known: dict[Any, weakref.ref[Cell]] = {}  # id-free: keyed by the weakref itself
        functools.update_wrapper(self, fn)

    def experimental_get_tracing_count(self) -> int:
        return self.tracing_count

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        """As a method: the instance is a static argument (one trace per instance)."""
        return self if obj is None else functools.partial(self, obj)

    def __call__(self, *args: Any) -> Any:
        scope = _context.effective()
        if scope is not None and ((scope.recording is not None and not scope.paused)
                                  or scope.graph is not None or scope.frame is not None):
            return self.fn(*args)  # recorded op by op, or part of an enclosing trace
        if not jx.at_top_level():
            return self.fn(*args)  # inlined into the JAX transformation
        flat, tree = jax.tree.flatten(args, is_leaf=_is_output_leaf)
        dynamic = [plain_value(x) for x in flat if _is_array(x)]
        statics = [_DYNAMIC if _is_array(x) else x for x in flat]
        device = None if scope is None or scope.device is None else resolve(
            scope.device, op="function")
        key = (self._signature(tree, flat, dynamic), device)
        trace = self._traces.get_or_build(
            key, lambda: _Trace(self, tree, statics, list(self._known.values())))
        return trace(dynamic, device)

    def _signature(self, tree: Any, flat: list[Any], dynamic: list[Any]) -> Hashable:
        parts: list[Any] = []
        for x in flat:
            if _is_array(x):
                continue
            try:
                hash(x)
            except TypeError:
                raise TypeError(message(
                    "ap.function", "an argument is neither an array nor hashable",
                    f"{type(x).__name__} {x!r:.60}", "arrays (traced) or hashable Python "
                    "values (static: one trace per value)", "pass it as an array, or close "
                    "over it")) from None
            parts.append((type(x), x))
        types = tuple((np.shape(v), np.dtype(v.dtype), jx.is_weakly_typed(v)) for v in dynamic)
        return (tree, tuple(parts), types, jx.config_key())


def _is_output_leaf(x: Any) -> bool:
    """Arrays and variables; variables pass as themselves (cells the program reads and
    writes, static arguments keyed by identity)."""
    return _is_array(x) or isinstance(x, Variable)


def _is_dynamic_out(x: Any) -> bool:
    return jx.is_tracer(x) or isinstance(x, jax.Array)


def _back_home(old: Any, new: Any) -> Any:
    """`new` on the one device `old` lived on (a cell written by a function that ran on
    another device keeps its home, as a TensorFlow variable does)."""
    if isinstance(old, jax.Array) and isinstance(new, jax.Array) and \
            new.sharding != old.sharding and len(old.devices()) == 1:
        return jax.device_put(new, old.sharding)
    return new


def _merge(statics: list[Any], dynamic: list[Any]) -> list[Any]:
    it = iter(dynamic)
    return [next(it) if s is _DYNAMIC else s for s in statics]


def function(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorator: compile `fn` (a whole train step if need be) once per input signature."""
    if fn is None:
        return lambda f: Function(f, **options)
    return Function(fn, **options)
