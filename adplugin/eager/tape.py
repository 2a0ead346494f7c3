"""`ap.GradientTape`: TensorFlow's eager gradient tape, over adplugin's graph derivation.

Nested tapes share one recording (so an inner gradient is itself recorded by the outer tape),
but each tape has its own view of it, as in TensorFlow: what it watches (and since when), and
the windows of time it was recording. An op counts for a tape when it was recorded inside one
of its windows and one of its inputs was watched by it or counts for it. Gradients follow only
the ops that count, so a tape never differentiates what it did not see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import DerivativeError, message
from adplugin.eager.explain import warn_none_gradient
from adplugin.eager.program import Program, cached_program
from adplugin.eager.recording import EagerTensor, Recording
from adplugin.eager.variable import Variable, plain_value
from adplugin.ir.graph import Tensor
from adplugin.transforms.reverse import active_nodes, unconnected_mode
from adplugin.transforms.reverse import gradients as graph_gradients


def _is_source_leaf(x: Any) -> bool:
    return isinstance(x, (Variable, EagerTensor, jax.Array, np.ndarray))


def _check_watchable(x: Any) -> None:
    """As in TensorFlow, only tensors and variables can be watched: a NumPy array (or a
    Python number) is converted anew by every op, so watching it could never record."""
    if isinstance(x, (Variable, EagerTensor, jax.Array)) or jx.is_tracer(x):
        return
    raise ValueError(message("GradientTape.watch", f"cannot watch a {type(x).__name__}",
                             f"{type(x).__name__} {x!r:.60}", "a Variable, a jax.Array, "
                             "ap.constant(...) or an eager tensor", "convert it once with "
                             "x = ap.constant(value) (or jnp.asarray), watch x and compute "
                             "with x"))


class GradientTape:
    """Records operations for automatic differentiation (TensorFlow's semantics).

    Inside `with ap.GradientTape() as tape:`, reads of trainable variables are watched (unless
    `watch_accessed_variables=False`), `tape.watch(x)` watches arrays, constants and variables
    too, and ops on watched values are recorded. `tape.gradient(target, sources)` returns
    d target / d source for each source of a nested structure; a non-persistent tape allows one
    such call. Tapes nest: the gradient taken inside an outer tape is recorded by it.
    """

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True):
        self.persistent = persistent
        self.watch_accessed_variables = watch_accessed_variables
        self._recording: Recording | None = None
        self._ordinal = -1  # this tape's index among the recording's tapes
        self._watch_since: dict[int, int] = {}  # node id -> graph length when watched
        self._watched_vars: dict[Variable, None] = {}  # explicitly watched, in order
        self._read_vars: dict[Variable, None] = {}  # read while auto-watching, in order
        self._windows: list[list[int]] = []  # [start, end) node ranges recorded; end -1: open
        self._active = False  # inside the `with` block
        self._recording_now = False  # the window is open (not stopped, not after gradient)
        self._used = False

    # --- context --------------------------------------------------------------------------------

    def __enter__(self) -> GradientTape:
        if self._active:
            raise ValueError(message(
                "GradientTape", "the tape is already recording", "`with tape:` inside "
                "`with tape:`", "one `with` block per tape at a time",
                "use a second ap.GradientTape() for nested recording"))
        scope = _context.effective()
        outer = scope.recording if scope is not None and not scope.paused else None
        rec = outer if outer is not None else self._recording or Recording()
        if self._recording is not None and rec is not self._recording:
            raise RuntimeError(message(
                "GradientTape", "re-entering a tape inside another tape's recording",
                "`with tape:` again, nested in a tape it was not nested in before",
                "re-entering in the same nesting as the first time",
                "use a new ap.GradientTape() here"))
        with rec.lock:
            if self._recording is None:
                self._recording = rec
                self._ordinal = len(rec.tapes)
                rec.tapes.append(self)
            self._open(rec)
        _context.push(self, recording=rec, paused=False, graph=None)
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        _context.pop(self)
        self._active = False
        rec = self._recording
        assert rec is not None
        with rec.lock:
            self._close(rec)

    def _open(self, rec: Recording) -> None:
        rec.active_tapes.append(self)
        self._windows.append([len(rec.graph.nodes), -1])
        self._recording_now = True
        rec.event("enter", self._ordinal)

    def _close(self, rec: Recording) -> None:
        if not self._recording_now:
            return
        rec.active_tapes.remove(self)
        self._windows[-1][1] = len(rec.graph.nodes)
        self._recording_now = False
        rec.event("exit", self._ordinal)

    def _rec(self, op: str) -> Recording:
        if self._recording is None:
            raise RuntimeError(message(f"GradientTape.{op}", "the tape has not recorded yet",
                                       "a tape outside any `with` block",
                                       "a tape used as `with ap.GradientTape() as tape:`",
                                       "call it inside or after the `with` block"))
        return self._recording

    # --- watching -------------------------------------------------------------------------------

    def watch(self, tensor: Any) -> None:
        """Watch variables, JAX arrays, constants or eager tensors (a nested structure)."""
        leaves = jax.tree.leaves(tensor, is_leaf=_is_source_leaf)
        for x in leaves:
            _check_watchable(x)
        rec = self._rec("watch")
        with rec.lock:
            for x in leaves:
                self._watch_one(rec, x)

    def _watch_one(self, rec: Recording, x: Any) -> None:
        if isinstance(x, Variable):
            self._watched_vars[x] = None
            self._watch_node(rec, rec.variable_leaf(x))
        elif type(x) is EagerTensor and x.recording is rec and x.node is not None:
            self._watch_node(rec, x.node)
        else:
            self._watch_node(rec, rec.leaf(x))

    def _watch_node(self, rec: Recording, t: Tensor) -> None:
        if t.node.id not in self._watch_since:
            self._watch_since[t.node.id] = len(rec.graph.nodes)
            rec.event("watch", self._ordinal, rec.sidx[t.node.id])

    def _watches_variable(self, v: Variable) -> bool:
        return v in self._watched_vars or (self.watch_accessed_variables and v.trainable)

    def _on_variable_read(self, v: Variable, leaf: Tensor) -> None:
        """`v` was read (as `leaf`) while this tape records: watch it if the tape watches `v`."""
        if leaf.node.id in self._watch_since or not self._watches_variable(v):
            return
        if v not in self._watched_vars:
            self._read_vars[v] = None
        rec = self._recording
        assert rec is not None
        fresh = leaf.node.id == len(rec.graph.nodes) - 1
        self._watch_since[leaf.node.id] = leaf.node.id if fresh else len(rec.graph.nodes)
        rec.event("watch", self._ordinal, rec.sidx[leaf.node.id])

    def watched_variables(self) -> list[Variable]:
        """The variables this tape watches (watched or read while recording), in creation
        order."""
        found = {**self._watched_vars, **self._read_vars}
        return sorted(found, key=lambda v: v._uid)

    @contextmanager
    def stop_recording(self) -> Iterator[None]:
        """Inside, this tape records nothing (other active tapes go on recording)."""
        rec = self._rec("stop_recording")
        if not self._recording_now:
            raise RuntimeError(message("GradientTape.stop_recording", "the tape is not recording",
                                       "stop_recording() outside the tape's `with` block",
                                       "a recording tape", "call it inside `with tape:`"))
        with rec.lock:
            self._close(rec)
        others = bool(rec.active_tapes)
        if not others:
            _context.push(self, paused=True)
        try:
            yield
        finally:
            if not others:
                _context.pop(self)
            with rec.lock:
                self._open(rec)

    def reset(self) -> None:
        """Forget everything this tape recorded and watched (it goes on recording if active)."""
        self._watch_since.clear()
        self._watched_vars.clear()
        self._read_vars.clear()
        self._used = False
        rec = self._recording
        if rec is None:
            return
        with rec.lock:
            self._windows = [[len(rec.graph.nodes), -1]] if self._recording_now else []
            rec.event("reset", self._ordinal)
        if not self._active:
            self._recording, self._ordinal = None, -1

    # --- what the tape saw ------------------------------------------------------------------

    def _counted(self, rec: Recording) -> set[int]:
        """Node ids that count for this tape: the ones it watches, and ops recorded in its
        windows with an input that counts (an input watched later than the op does not)."""
        since = self._watch_since
        counted = set(since)
        nodes = rec.graph.nodes
        for start, end in self._windows:
            for node in nodes[start:len(nodes) if end < 0 else end]:
                if node.kind != "op":
                    continue
                for i in node.inputs:
                    j = i.node.id
                    if (j in counted and j not in since) or since.get(j, node.id + 1) <= node.id:
                        counted.add(node.id)
                        break
        return counted

    def _start_derivation(self, op: str) -> Recording:
        rec = self._rec(op)
        if self._used and not self.persistent:
            raise RuntimeError(message(
                f"GradientTape.{op}", "A non-persistent GradientTape can only be used to "
                "compute one set of gradients (or jacobians)",
                "a second gradient/jacobian call", "one call per non-persistent tape",
                "create the tape with ap.GradientTape(persistent=True)"))
        self._used = True
        if self._recording_now and not self.persistent:
            with rec.lock:  # as in TensorFlow: a non-persistent tape stops recording here
                self._close(rec)
        return rec

    # --- derivatives ----------------------------------------------------------------------------

    def gradient(self, target: Any, sources: Any, output_gradients: Any = None,
                 unconnected_gradients: Any = "none") -> Any:
        """d(sum of target)/d source for every source of the nested structure `sources`."""
        unconnected = unconnected_mode(unconnected_gradients, "GradientTape.gradient")
        rec = self._start_derivation("gradient")
        flat_sources, tree = jax.tree.flatten(sources, is_leaf=_is_source_leaf)
        _check_float_sources("GradientTape.gradient", flat_sources)
        targets = jax.tree.leaves(target, is_leaf=_is_source_leaf)
        outs = None if output_gradients is None else jax.tree.leaves(
            output_gradients, is_leaf=lambda x: isinstance(x, EagerTensor))
        with rec.lock:
            grads = self._gradients(rec, targets, flat_sources, outs)
        if unconnected == "none" and any(g is None for g in grads):
            self._warn_none(rec, target, flat_sources, grads)
        return jax.tree.unflatten(tree, [_unconnected(s, unconnected) if g is None else g
                                         for s, g in zip(flat_sources, grads)])

    def _warn_none(self, rec: Recording, target: Any, sources: list[Any], grads: list[Any]
                   ) -> None:
        """A watched source got None: warn why (once per call site of `gradient`)."""
        for s, g in zip(sources, grads):
            if g is None and self._watches(rec, s):
                warn_none_gradient(target, s, self, depth=3)  # 3: the caller of gradient()
                return

    def _watches(self, rec: Recording, s: Any) -> bool:
        if isinstance(s, Variable):
            return s in self._watched_vars or s in self._read_vars
        return any(x.node.id in self._watch_since for x in rec.source_nodes(s))

    def _gradients(self, rec: Recording, targets: list[Any], sources: list[Any],
                   outs: list[Any] | None) -> list[Any]:
        pairs = [(rec.target_node(t), i) for i, t in enumerate(targets)]
        ys = [y for y, _ in pairs if y is not None]
        groups = [rec.source_nodes(s) for s in sources]
        xs = list({x.node.id: x for g in groups for x in g}.values())
        if not ys or not xs:
            return [None] * len(sources)
        gys = None
        if outs is not None:
            if len(outs) != len(targets):
                raise ValueError(message("GradientTape.gradient", "output_gradients does not "
                                         "match target", f"{len(outs)} output gradients",
                                         f"{len(targets)}, one per target", "give one per "
                                         "target"))
            gys = [jnp.asarray(plain_value(outs[i])) for y, i in pairs if y is not None]
        if self._recorded_by_a_tape(rec) or rec._traced():
            by_x = self._symbolic(rec, ys, xs, gys)
        else:
            by_x = self._compiled(rec, ys, xs, gys)
        return [_sum([by_x[k] for k in (rec.sidx[x.node.id] for x in g) if k in by_x])
                for g in groups]

    def _recorded_by_a_tape(self, rec: Recording) -> bool:
        """Whether a tape records now (an outer one, or this one when persistent and inside its
        block): then derivatives stay symbolic, so that tape sees them (higher orders)."""
        return bool(rec.active_tapes)

    def _live(self, rec: Recording, ys: list[Tensor], xs: list[Tensor]
              ) -> tuple[list[Tensor], set[int]]:
        counted = self._counted(rec)
        return [x for x in xs if x.node.id in counted], counted

    def _symbolic(self, rec: Recording, ys: list[Tensor], xs: list[Tensor],
                  gys: list[Any] | None) -> dict[int, Any]:
        live, counted = self._live(rec, ys, xs)
        if not live:
            return {}
        derived = graph_gradients(ys, live, grad_ys=gys, only=counted)
        rec.register_new_nodes()
        return {rec.sidx[x.node.id]: EagerTensor(rec, d) for x, d in zip(live, derived)
                if d is not None}

    def _compiled(self, rec: Recording, ys: list[Tensor], xs: list[Tensor],
                  gys: list[Any] | None) -> dict[int, Any]:
        weights = None if gys is None else tuple((g.shape, g.dtype.str) for g in gys)
        key = ("grad", rec.prefix, self._ordinal, tuple(rec.sidx[y.node.id] for y in ys),
               tuple(rec.sidx[x.node.id] for x in xs), weights, jx.config_key())

        def build() -> Program:
            live, counted = self._live(rec, ys, xs)
            feeds = rec.leaves_before(max(t.node.id for t in ys + xs) + 1)
            with rec.graph.building():
                weights_in = None if gys is None else [
                    rec.graph.placeholder(g.shape, g.dtype, name="output_gradient") for g in gys]
            derived = graph_gradients(ys, live, grad_ys=weights_in, only=counted) if live else []
            rec.skip_new_nodes()
            connected = [rec.sidx[x.node.id] for x, d in zip(live, derived) if d is not None]
            fetched = [d for d in derived if d is not None]
            return Program(rec.graph, [*ys, *fetched], [*feeds, *(weights_in or [])],
                           meta=connected)

        program = cached_program(key, build)
        n_leaves = program.n_feeds - (len(gys) if gys else 0)
        values = program([rec.values[t.node.id] for t in rec.leaves[:n_leaves]] + list(gys or []))
        for y, v in zip(ys, values):  # the targets' values came along: keep them
            rec.values.setdefault(y.node.id, v)
        return dict(zip(program.meta, values[len(ys):]))

    # --- Jacobians --------------------------------------------------------------------------

    def jacobian(self, target: Any, sources: Any, unconnected_gradients: Any = "none",
                 parallel_iterations: int | None = None, experimental_use_pfor: bool = True
                 ) -> Any:
        """d target[i...] / d source[j...] for each source: shape target.shape + source.shape
        (None for a source the target does not depend on, or zeros with "zero")."""
        unconnected = unconnected_mode(unconnected_gradients, "GradientTape.jacobian")
        self._check_strategy("jacobian", parallel_iterations, experimental_use_pfor)
        rec = self._start_derivation("jacobian")
        flat_sources, tree = jax.tree.flatten(sources, is_leaf=_is_source_leaf)
        _check_float_sources("GradientTape.jacobian", flat_sources)
        with rec.lock:
            jacs = self._jacobians(rec, target, flat_sources, batch=False)
        return jax.tree.unflatten(tree, [
            _unconnected_jacobian(target, s, unconnected) if j is None else j
            for s, j in zip(flat_sources, jacs)])

    def batch_jacobian(self, target: Any, source: Any, unconnected_gradients: Any = "none",
                       parallel_iterations: int | None = None,
                       experimental_use_pfor: bool = True) -> Any:
        """Per-example Jacobians: for target [b, *t] and source [b, *s], the [b, *t, *s] array
        of d target[i, ...] / d source[i, ...] (examples assumed independent, as in
        TensorFlow). An unconnected source gives zeros whatever `unconnected_gradients` says,
        as in TensorFlow."""
        unconnected_mode(unconnected_gradients, "GradientTape.batch_jacobian")
        self._check_strategy("batch_jacobian", parallel_iterations, experimental_use_pfor)
        t_shape, s_shape = tuple(np.shape(target)), tuple(np.shape(source))
        _check_batch_shapes(t_shape, s_shape)
        rec = self._start_derivation("batch_jacobian")
        _check_float_sources("GradientTape.batch_jacobian", [source])
        with rec.lock:
            (jac,) = self._jacobians(rec, target, [source], batch=True)
        if jac is None:
            return jnp.zeros(t_shape + s_shape[1:], np.dtype(target.dtype))
        return jac

    def _check_strategy(self, op: str, parallel_iterations: int | None, use_pfor: bool) -> None:
        """TensorFlow computes row by row (a while loop) on a persistent tape only."""
        if self.persistent or (use_pfor and parallel_iterations is None):
            return
        asked = "experimental_use_pfor=False" if not use_pfor else "parallel_iterations"
        raise RuntimeError(message(
            f"GradientTape.{op}", f"GradientTape must be created with persistent=True to "
            f"compute the {op} with {asked}", f"a non-persistent tape and {asked}",
            "a persistent tape", "create it with ap.GradientTape(persistent=True), or leave "
            f"{asked.split('=')[0]} at its default"))

    def _jacobians(self, rec: Recording, target: Any, sources: list[Any], batch: bool
                   ) -> list[Any]:
        y = rec.target_node(target)
        groups = [rec.source_nodes(s) for s in sources]
        xs = list({x.node.id: x for g in groups for x in g}.values())
        if y is None or not xs:
            return [None] * len(sources)
        live, counted = self._live(rec, [y], xs)
        live = [x for x in live  # connected: y depends differentiably on x through counted ops
                if y.node.id in active_nodes(rec.graph, [x], only=counted)]
        if not live:
            return [None] * len(sources)
        if y.size == 0 or any(x.size == 0 for x in live):  # nothing to differentiate: zeros
            by_x = {x.node.id: jnp.zeros(_jacobian_shape(y, x, batch), y.dtype) for x in live}
        elif self._recorded_by_a_tape(rec):
            by_x = _symbolic_jacobian(rec, y, live, counted, batch)
        else:
            by_x = _numeric_jacobian(rec, y, live, batch)
        return [_sum([by_x[x.node.id] for x in g if x.node.id in by_x]) for g in groups]


# ----------------------------------------------------------------------------------------------
# Jacobians: rows of reverse mode, symbolic (for an outer tape) or through jax.jacrev
# ----------------------------------------------------------------------------------------------

def _jacobian_shape(y: Tensor, x: Tensor, batch: bool) -> tuple[int, ...]:
    return (*y.shape, *x.shape[1:]) if batch else (*y.shape, *x.shape)


def _check_batch_shapes(t_shape: tuple[int, ...], s_shape: tuple[int, ...]) -> None:
    for what, shape in (("target", t_shape), ("source", s_shape)):
        if len(shape) < 2:
            raise ValueError(message(
                "GradientTape.batch_jacobian", f"{what} must have rank at least 2",
                f"{what} of shape {list(shape)}", "shapes [b, ...] of rank 2 or more",
                "add the batch dimension (ap.expand_dims) or use tape.jacobian"))
    if t_shape[0] != s_shape[0]:
        raise ValueError(message(
            "GradientTape.batch_jacobian", "Need first dimension of target shape "
            f"{list(t_shape)} and source shape {list(s_shape)} to match",
            f"{t_shape[0]} and {s_shape[0]} examples", "one batch size",
            "give target and source the same leading (batch) dimension"))


def _numeric_jacobian(rec: Recording, y: Tensor, xs: list[Tensor], batch: bool
                      ) -> dict[int, Any]:
    leaves = rec.leaves_before(y.node.id + 1)
    inner = [x for x in xs if x not in leaves]
    feeds = [*leaves, *inner]
    program = Program(rec.graph, [y], feeds)
    values = [rec.values[t.node.id] for t in leaves] + (rec.evaluate(inner) if inner else [])
    positions = [feeds.index(x) for x in xs]

    def fn(*x_values: Any) -> Any:
        full = list(values)
        for p, v in zip(positions, x_values):
            full[p] = v
        return program.interpret(*full)[0]

    jacs = jax.jacrev(fn, argnums=tuple(range(len(xs))))(*[values[p] for p in positions])
    if batch:
        jacs = tuple(_batch_diagonal(j, y.shape, x.shape) for j, x in zip(jacs, xs))
    return {x.node.id: j for x, j in zip(xs, jacs)}


def _batch_diagonal(jac: Any, t_shape: tuple[int, ...], s_shape: tuple[int, ...]) -> Any:
    """[b, *t, b, *s] -> [b, *t, *s]: the blocks where the two example indices agree."""
    b, t, s = t_shape[0], int(np.prod(t_shape[1:])), int(np.prod(s_shape[1:]))
    blocks = jnp.reshape(jac, (b, t, b, s))
    diagonal = jnp.moveaxis(jnp.diagonal(blocks, axis1=0, axis2=2), -1, 0)  # [b, t, s]
    return jnp.reshape(diagonal, t_shape + s_shape[1:])


def _symbolic_jacobian(rec: Recording, y: Tensor, xs: list[Tensor], counted: set[int],
                       batch: bool) -> dict[int, Any]:
    """Jacobian rows as graph nodes, so a recording tape differentiates them again."""
    from adplugin.primitives.shape import concatenate, reshape, transpose

    start = len(rec.graph.nodes)
    with rec.graph.building():
        if batch:  # row k: d sum_i target[i, k] / d source, valid for independent examples
            rows2 = reshape(y, (y.shape[0], -1))
            picks = [rows2[:, k] for k in range(rows2.shape[1])]
        else:
            flat = reshape(y, (-1,))
            picks = [flat[k] for k in range(flat.shape[0])]
        # the picks' nodes extend what the tape saw: paths run through them
        only = counted | set(range(start, len(rec.graph.nodes)))
        rows: dict[int, list[Any]] = {x.node.id: [] for x in xs}
        for pick in picks:
            for x, g in zip(xs, graph_gradients(pick, xs, unconnected_gradients="zero",
                                                only=only)):
                rows[x.node.id].append(reshape(g, (1, *x.shape)))
        out = {}
        for x in xs:
            parts = rows[x.node.id]
            stacked = concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
            if batch:  # [n, b, *s] -> [b, *t, *s]
                moved = transpose(stacked, (1, 0, *range(2, stacked.ndim)))
                out[x.node.id] = reshape(moved, (*y.shape, *x.shape[1:]))
            else:
                out[x.node.id] = reshape(stacked, (*y.shape, *x.shape))
    rec.register_new_nodes()
    return {k: EagerTensor(rec, v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _sum(parts: list[Any]) -> Any:
    if not parts:
        return None
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _check_float_sources(op: str, sources: list[Any]) -> None:
    for s in sources:
        dtype = np.dtype(getattr(s, "dtype", np.float32))
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise DerivativeError(message(
                op, "a source is not floating point",
                f"{getattr(s, 'name', type(s).__name__)} of dtype {dtype.name}",
                "floating-point sources", "cast the source to a float dtype (integer "
                "values have no derivative)"))


def _unconnected(source: Any, mode: str) -> Any:
    if mode == "zero":
        return jnp.zeros(np.shape(source), getattr(source, "dtype", np.float32))
    return None


def _unconnected_jacobian(target: Any, source: Any, mode: str) -> Any:
    if mode == "zero":
        return jnp.zeros(tuple(np.shape(target)) + tuple(np.shape(source)),
                         getattr(source, "dtype", np.float32))
    return None
