"""`ap.function`: compile a whole Python step (tapes, gradients, optimizer updates, variable
assignments) into one XLA program, traced once per input signature.

The function is made pure and handed to `jax.jit`: every piece of mutable state it touches
(variables, optimizer slots: `Cell`s) becomes an input of the compiled program, and every one
it writes becomes an output, stored back after each call. Which cells a function touches is
found by tracing it: a trace that meets a cell it was not given stops, and the function is
traced again with that cell as an input (TensorFlow's tf.function captures variables the same
way). So every call reads the current values and applies its updates.
"""

from __future__ import annotations

import functools
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
from adplugin.eager.variable import Cell, Variable

_DYNAMIC = object()  # marks, among arguments and results, the places of traced arrays


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, EagerTensor)) or jx.is_tracer(x)


class _Retrace(Exception):
    """A trace met cells it was not given: trace again with them as inputs."""

    def __init__(self, cells: list[Cell]):
        super().__init__(f"{len(cells)} more cells")
        self.cells = cells


class Frame:
    """The values of cells inside one trace of a function (the scope's `frame`)."""

    def __init__(self, cells: list[Cell], values: list[Any]):
        self.values: dict[Cell, Any] = dict(zip(cells, values))
        self.written: dict[Cell, None] = {}
        self.discovered: dict[Cell, None] = {}

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
        self.values[cell] = value
        self.written[cell] = None


class _Trace:
    """One input signature's compiled program and the cells it takes."""

    def __init__(self, fn: Callable[..., Any], tree: Any, statics: list[Any],
                 known: list[weakref.ref[Cell]]):
        # statics: the static arguments, with _DYNAMIC where the traced arrays go; known: the
        # cells other signatures' traces met (likely these too: saves a retrace)
        self.fn, self.tree, self.statics = fn, tree, statics
        self.cells: list[weakref.ref[Cell]] = [r for r in known if r() is not None]
        self.written: list[int] = []  # positions (in cells) of the cells the program writes
        self.out_tree: Any = None
        self.out_statics: list[Any] = []
        self._jitted = self._make_jitted()

    def _make_jitted(self) -> Any:
        return jax.jit(self._pure)

    def _pure(self, cell_values: list[Any], dynamic: list[Any]) -> Any:
        cells = self._live_cells()
        frame = Frame(cells, cell_values)
        args = _merge(self.statics, dynamic)
        with _context.scoped(frame, frame=frame, graph=None, recording=None, paused=False):
            out = self.fn(*jax.tree.unflatten(self.tree, args))
        flat, self.out_tree = jax.tree.flatten(out, is_leaf=_is_output_leaf)
        if frame.discovered:
            raise _Retrace(list(frame.discovered))
        position = {c: i for i, c in enumerate(cells)}
        self.written = [position[c] for c in frame.written]
        outs = [_output_value(x) for x in flat]
        self.out_statics = [_DYNAMIC if _is_dynamic_out(x) else x for x in outs]
        return ([x for x in outs if _is_dynamic_out(x)],
                [frame.values[cells[i]] for i in self.written])

    def _live_cells(self) -> list[Cell]:
        cells = [r() for r in self.cells]
        if any(c is None for c in cells):
            raise RuntimeError(message(
                "ap.function", "a variable the compiled function uses was deleted",
                "a dead variable", "the variables alive while the function is used",
                "keep the variables referenced, or make a new ap.function"))
        return cells  # type: ignore[return-value]

    def __call__(self, dynamic: list[Any]) -> Any:
        while True:
            cells = self._live_cells()
            try:
                outs, written = self._jitted([c._stored for c in cells], dynamic)
                break
            except _Retrace as more:
                known = set(cells)
                self.cells += [weakref.ref(c) for c in more.cells if c not in known]
                self._jitted = self._make_jitted()
        for i, value in zip(self.written, written):
            cells[i]._write(value)
        it = iter(outs)
        return jax.tree.unflatten(self.out_tree, [next(it) if s is _DYNAMIC else s
                                                  for s in self.out_statics])


class Function:
    """A Python function of `ap.*` ops (tapes, optimizers and assignments included), compiled
    per input signature: the arguments' structure with each array's shape and dtype (other
    arguments by value). Inside an active gradient tape it runs op by op instead, so the tape
    records it; inside a JAX transformation it is inlined."""

    def __init__(self, fn: Callable[..., Any], max_traces: int = 64):
        self.fn = fn
        self._traces: LRU[_Trace] = LRU(max_traces)
        self._known: dict[Any, weakref.ref[Cell]] = {}  # id-free: keyed by the weakref itself
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        scope = _context.effective()
        if scope is not None and (scope.recording is not None or scope.graph is not None):
            return self.fn(*args)
        if not jx.at_top_level():
            return self.fn(*args)
        flat, tree = jax.tree.flatten(args, is_leaf=_is_output_leaf)
        dynamic = [_input_value(x) for x in flat if _is_array_like(x)]
        statics = [_DYNAMIC if _is_array_like(x) else x for x in flat]
        key = self._signature(tree, flat, dynamic)
        trace = self._traces.get_or_build(
            key, lambda: _Trace(self.fn, tree, statics, list(self._known.values())))
        try:
            return trace(dynamic)
        finally:
            for ref in trace.cells:
                self._known.setdefault(ref, ref)

    def _signature(self, tree: Any, flat: list[Any], dynamic: list[Any]) -> Hashable:
        parts: list[Any] = []
        for x in flat:
            if _is_array_like(x):
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


def _is_array_like(x: Any) -> bool:
    """Traced arguments; variables are not: they pass as themselves (cells the program reads
    and writes), keyed by identity."""
    return _is_array(x)


def _input_value(x: Any) -> Any:
    if isinstance(x, EagerTensor):
        return x.materialized
    return x


def _is_output_leaf(x: Any) -> bool:
    return _is_array(x) or isinstance(x, Variable)


def _output_value(x: Any) -> Any:
    if isinstance(x, Variable):
        return x.value
    if isinstance(x, EagerTensor):
        return x.materialized
    return x


def _is_dynamic_out(x: Any) -> bool:
    return jx.is_tracer(x) or isinstance(x, jax.Array)


def _merge(statics: list[Any], dynamic: list[Any]) -> list[Any]:
    it = iter(dynamic)
    return [next(it) if s is _DYNAMIC else s for s in statics]


def function(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorator: compile `fn` (a whole train step if need be) once per input signature."""
    if fn is None:
        return lambda f: Function(f, **options)
    return Function(fn, **options)
