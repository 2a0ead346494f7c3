"""`ap.GradientTape`: TensorFlow's eager gradient tape, over adplugin's graph derivation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin._errors import DerivativeError, message
from adplugin.eager.recording import (
    EagerTensor,
    Program,
    Recording,
    active_recording,
    cached_program,
    state,
    unwatch_arrays,
    watch_array,
)
from adplugin.eager.variable import Variable
from adplugin.ir.graph import Tensor
from adplugin.transforms.reverse import gradients as graph_gradients


def _is_source_leaf(x: Any) -> bool:
    return isinstance(x, (Variable, EagerTensor, jax.Array, np.ndarray))


class GradientTape:
    """Records operations for automatic differentiation (TensorFlow's semantics).

    Inside `with ap.GradientTape() as tape:`, reads of trainable variables are watched (unless
    `watch_accessed_variables=False`), `tape.watch(x)` watches arrays too, and ops on watched
    values are recorded. `tape.gradient(target, sources)` returns d target / d source for each
    source of a nested structure; a non-persistent tape allows one such call. Tapes nest: the
    gradient taken inside an outer tape is recorded by it, giving second derivatives.
    """

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True):
        self.persistent = persistent
        self.watch_accessed_variables = watch_accessed_variables
        self._recording: Recording | None = None
        self._watched: dict[int, Any] = {}  # id -> watched variable or array
        self._used = False
        self._active = False

    # --- context --------------------------------------------------------------------------------

    def __enter__(self) -> GradientTape:
        if state.depth == 0 or state.recording is None:
            state.recording = Recording()
        state.depth += 1
        self._recording = state.recording
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active = False
        state.depth -= 1
        if state.depth == 0 and state.recording is not None:
            unwatch_arrays(state.recording)

    def _rec(self, op: str) -> Recording:
        if self._recording is None:
            raise RuntimeError(message(f"GradientTape.{op}", "the tape has not recorded yet",
                                       "a tape outside any `with` block",
                                       "a tape used as `with ap.GradientTape() as tape:`",
                                       "call it inside or after the `with` block"))
        return self._recording

    # --- watching -------------------------------------------------------------------------------

    def watch(self, tensor: Any) -> None:
        """Watch a variable, array or eager tensor (or a nested structure of them)."""
        rec = self._rec("watch")
        for x in jax.tree.leaves(tensor, is_leaf=_is_source_leaf):
            if isinstance(x, Variable):
                rec.leaf(x)
            elif isinstance(x, (jax.Array, np.ndarray)):
                watch_array(rec, x)
            elif not isinstance(x, EagerTensor):
                raise TypeError(message("GradientTape.watch", "cannot watch this value",
                                        type(x).__name__, "a Variable, an array or an "
                                        "EagerTensor", "watch the arrays the loss depends on"))
            self._watched[id(x)] = x

    def watched_variables(self) -> list[Variable]:
        """Variables this tape watches: the ones watched and (by default) the ones read."""
        rec = self._recording
        found = {id(v): v for v in self._watched.values() if isinstance(v, Variable)}
        if rec is not None and self.watch_accessed_variables:
            for obj in rec._keepalive:
                if isinstance(obj, Variable) and obj.trainable:
                    found.setdefault(id(obj), obj)
        return list(found.values())

    def _is_watched(self, source: Any) -> bool:
        if isinstance(source, EagerTensor) or id(source) in self._watched:
            return True
        return (isinstance(source, Variable) and source.trainable
                and self.watch_accessed_variables)

    @contextmanager
    def stop_recording(self) -> Iterator[None]:
        """Inside, ops run eagerly and are not recorded (their results are constants)."""
        rec = self._rec("stop_recording")
        rec.paused += 1
        try:
            yield
        finally:
            rec.paused -= 1

    def reset(self) -> None:
        """Forget everything recorded and watched so far (recording goes on if active)."""
        if self._recording is not None:
            unwatch_arrays(self._recording)
        self._watched.clear()
        self._used = False
        if self._active:
            state.recording = self._recording = Recording()
        else:
            self._recording = None

    # --- derivatives ----------------------------------------------------------------------------

    def gradient(self, target: Any, sources: Any, output_gradients: Any = None,
                 unconnected_gradients: str = "none") -> Any:
        """d(sum of target)/d source for every source of the nested structure `sources`."""
        rec = self._rec("gradient")
        if self._used and not self.persistent:
            raise RuntimeError(message(
                "GradientTape.gradient", "a non-persistent tape's gradient was asked twice",
                "a second gradient call", "one call per non-persistent tape",
                "create the tape with ap.GradientTape(persistent=True)"))
        self._used = True
        flat_sources, tree = jax.tree.flatten(sources, is_leaf=_is_source_leaf)
        targets = jax.tree.leaves(target, is_leaf=lambda x: isinstance(x, EagerTensor))
        outs = jax.tree.leaves(output_gradients) if output_gradients is not None else None
        grads = self._gradients(rec, targets, flat_sources, outs, unconnected_gradients)
        return jax.tree.unflatten(tree, grads)

    def _source_node(self, rec: Recording, s: Any) -> Tensor | None:
        if not self._is_watched(s):
            return None
        if isinstance(s, EagerTensor):
            return s.node if s.recording is rec else None
        return rec.leaf_if_seen(s)

    def _gradients(self, rec: Recording, targets: list[Any], sources: list[Any],
                   output_gradients: list[Any] | None, unconnected: str) -> list[Any]:
        for s in sources:
            dtype = np.dtype(getattr(s, "dtype", np.float32))
            if not jnp.issubdtype(dtype, jnp.inexact):
                raise DerivativeError(message(
                    "GradientTape.gradient", "a source is not floating point",
                    f"{getattr(s, 'name', type(s).__name__)} of dtype {dtype.name}",
                    "floating-point sources", "cast the source to a float dtype"))
        nodes = [self._source_node(rec, s) for s in sources]
        ys = [t.node for t in targets if type(t) is EagerTensor and t.recording is rec]
        live = [n for n in nodes if n is not None]
        if not ys or not live:
            return [self._unconnected(s, unconnected) for s in sources]
        gys = None if output_gradients is None else [
            o.materialized if type(o) is EagerTensor else o for o in output_gradients]
        if active_recording() is rec:  # an outer tape records: stay symbolic, lazily
            derived = graph_gradients(ys, live, grad_ys=gys, unconnected_gradients="none")
            results = [EagerTensor(rec, d) if d is not None else None for d in derived]
        else:
            results = self._compiled_gradients(rec, ys, live, gys, targets)
        it = iter(results)
        return [self._unconnected(s, unconnected) if n is None else next(it)
                for s, n in zip(sources, nodes)]

    def _compiled_gradients(self, rec: Recording, ys: list[Tensor], xs: list[Tensor],
                            gys: list[Any] | None, targets: list[Any]) -> list[Any]:
        upto = max(t.node.id for t in ys + xs) + 1
        weights = None if gys is None else tuple(np.shape(g) for g in gys)
        key = ("grad", rec.structure(upto), tuple(t.node.id for t in ys),
               tuple(t.node.id for t in xs), weights)

        def build() -> Program:
            feeds = [rec.graph.placeholder(np.shape(g), np.asarray(g).dtype)
                     for g in gys] if gys is not None else None
            derived = graph_gradients(ys, xs, grad_ys=feeds, unconnected_gradients="zero")
            fetched = [t for t in derived if t is not None]
            return Program(rec.graph, [*ys, *fetched], rec.leaves[:] + (feeds or []))

        program = cached_program(key, build)
        leaf_values = rec.leaf_values[:program.n_leaves - (len(gys) if gys else 0)]
        values = program(leaf_values + list(gys or []))
        for t in targets:  # the forward values came along: keep them
            if type(t) is EagerTensor and t.recording is rec and t._value is None:
                t._set_value(values[ys.index(t.node)])
        return values[len(ys):]

    def _unconnected(self, source: Any, unconnected: str) -> Any:
        if unconnected == "zero":
            return jnp.zeros(np.shape(source), getattr(source, "dtype", np.float32))
        if unconnected != "none":
            raise ValueError(message("GradientTape.gradient", "unknown unconnected_gradients",
                                     repr(unconnected), "'none' or 'zero'", "pass one of them"))
        return None

    def jacobian(self, target: Any, sources: Any,
                 unconnected_gradients: str = "none") -> Any:
        """d target[i...] / d source[j...] for each source: shape target.shape + source.shape."""
        rec = self._rec("jacobian")
        flat_sources, tree = jax.tree.flatten(sources, is_leaf=_is_source_leaf)
        if type(target) is not EagerTensor or target.recording is not rec:
            return jax.tree.unflatten(tree, [self._unconnected(s, unconnected_gradients)
                                             for s in flat_sources])
        nodes = [self._source_node(rec, s) for s in flat_sources]
        live = [n for n in nodes if n is not None]
        program = Program(rec.graph, [target.node], rec.leaves[:])
        if any(n not in rec.leaves for n in live):
            raise NotImplementedError("GradientTape.jacobian: sources must be variables or "
                                      "watched arrays (not intermediate results)")
        positions = [rec.leaves.index(n) for n in live]
        values = rec.leaf_values[:]

        def fn(*xs: Any) -> Any:
            full = values[:]
            for p, x in zip(positions, xs):
                full[p] = x
            return program.interpret(*full)[0]

        jac = jax.jacrev(fn, argnums=tuple(range(len(live))))(*[values[p] for p in positions])
        it = iter(jac)
        return jax.tree.unflatten(tree, [self._unconnected(s, unconnected_gradients)
                                         if n is None else next(it)
                                         for s, n in zip(flat_sources, nodes)])
