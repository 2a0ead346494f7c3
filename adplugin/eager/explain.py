"""Why is my gradient None? `ap.explain_gradient(target, source, tape=None)` says.

A gradient is None when no differentiable path of recorded ops leads from the source to the
target. This module finds out which link is missing and names it:

- the target was never recorded: computed with `jax.numpy` / a `jax.Array`'s Python operators
  (which no tape sees), or eagerly from values no tape watched;
- the source was never watched (and which tape watched what), or a variable never read while
  the tape recorded;
- the target does not use the source at all (with the arrays that entered the recording
  unwatched, where a `jax.numpy` detour may hide);
- every path is cut: by `stop_gradient` (or another op of zero derivative) at node N, by an
  integer cast at node N (each with the user's source line that recorded it), or by ops this
  tape did not record.

The same walk serves graphs: for graph tensors (`tape=None`) it says which node cuts the
paths. `tape.gradient` warns with this text, once per call site, when a watched source gets
None.
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._primitive import ZERO_DERIVATIVE
from adplugin.eager.recording import EagerTensor, Recording
from adplugin.eager.variable import Variable
from adplugin.ir.graph import PLACEHOLDER, Graph, Node, Tensor


class NoneGradientWarning(UserWarning):
    """A watched source got a None gradient; the message says why."""


_HEAD = "The gradient of {t} with respect to {s} is None"


def explain_gradient(target: Any, source: Any, tape: Any = None) -> str:
    """A text saying why d target / d source is None (or that it is not).

    Args:
      target: what was differentiated: an eager tensor, a variable, a plain array, or a
        graph tensor.
      source: what it was differentiated with respect to (a variable, an array or eager
        tensor a tape watched, or a graph tensor / variable of the target's graph).
      tape: the `ap.GradientTape` asked (eager mode); None for graphs, or to consider every
        tape that recorded the target.
    """
    if isinstance(target, (list, tuple, dict)):  # several targets: the reason for each
        targets = jax.tree.leaves(target, is_leaf=lambda x: isinstance(
            x, (Variable, Tensor, EagerTensor, jax.Array, np.ndarray)))
        return "\n".join(f"Target {i}: {explain_gradient(t, source, tape)}"
                         for i, t in enumerate(targets))
    if isinstance(target, Tensor):
        return _explain_graph(target, source)
    return _explain_eager(target, source, tape)


# ----------------------------------------------------------------------------------------------
# The walk: which link of which path is missing
# ----------------------------------------------------------------------------------------------

def _cut_reason(node: Node) -> str | None:
    """Why derivatives do not pass through `node` (None when they do)."""
    if isinstance(node.op, str):
        return None
    if node.op.name == "stop_gradient":
        return "stop_gradient"
    if not jnp.issubdtype(node.output.dtype, jnp.inexact):
        if node.op.name == "convert_element_type":
            return f"an integer cast (to {node.output.dtype.name})"
        return f"an op with a {node.output.dtype.name} output ({node.op.name})"
    if node.op.jvp is ZERO_DERIVATIVE:
        return f"an op of zero derivative ({node.op.name})"
    return None


def _depends(graph: Graph, xs: list[Tensor]) -> set[int]:
    """Ids of the nodes whose value depends on some x in any way (xs included)."""
    found = {x.node.id for x in xs}
    for node in graph.nodes[min(found):]:
        if node.id not in found and any(i.node.id in found for i in node.inputs):
            found.add(node.id)
    return found


def _diagnose(graph: Graph, y: Tensor, xs: list[Tensor], allowed: set[int] | None
              ) -> tuple[str, list[tuple[Node, str]]]:
    """('connected' | 'unused' | 'cut', the cutting nodes with their reasons). `allowed`: the
    nodes a tape counts (paths through others are not its own); None for graphs."""
    depends = _depends(graph, xs)
    if y.node.id not in depends:
        return "unused", []
    x_ids = {x.node.id for x in xs}
    cuts: dict[int, tuple[Node, str]] = {}
    seen: set[int] = set()
    stack = [y.node]
    while stack:
        node = stack.pop()
        if node.id in seen or node.id not in depends:
            continue
        seen.add(node.id)
        if node.id in x_ids:
            return "connected", []
        reason = _cut_reason(node)
        if reason is None and allowed is not None and node.id not in allowed:
            reason = "ops this tape did not record (recorded while it was not recording)"
        if reason is not None:
            cuts[node.id] = (node, reason)
            continue
        stack.extend(i.node for i in node.inputs)
    return "cut", sorted(cuts.values(), key=lambda c: -c[0].id)


def _unwatched_leaves(rec: Recording, y: Tensor, watched: set[int]) -> list[Node]:
    """Array leaves the target depends on that no tape watches (where jnp detours enter)."""
    arrays = _array_leaves(rec)
    seen: set[int] = set()
    stack, found = [y.node], []
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.id in arrays and node.id not in watched:
            found.append(node)
        stack.extend(i.node for i in node.inputs)
    return sorted(found, key=lambda n: n.id)


def _array_leaves(rec: Recording) -> set[int]:
    """Ids of the leaves standing for arrays and constants (not variables)."""
    return {t.node.id for obj, _, t in rec._leaf_of.values() if not isinstance(obj, Variable)}


def _where(rec: Recording | None, node: Node, verb: str = "recorded") -> str:
    site = rec.where.get(node.id) if rec is not None else None
    return f" ({verb} at {site})" if site else ""


def _describe_cuts(rec: Recording | None, cuts: list[tuple[Node, str]]) -> str:
    parts = [f"{reason} at node %{node.id}{_where(rec, node)}" for node, reason in cuts]
    return "every path from the source to the target is cut: by " + "; by ".join(parts)


# ----------------------------------------------------------------------------------------------
# Eager mode
# ----------------------------------------------------------------------------------------------

def _name(x: Any) -> str:
    if isinstance(x, Variable):
        return f"variable {x.name!r}"
    if type(x) is EagerTensor:
        if x.node is not None:
            node = x.node.node
            return f"tensor %{node.id} ({node.op_name}, {x.dtype.name}{list(x.shape)})"
        return f"eager tensor {x.dtype.name}{list(x.shape)}"
    if isinstance(x, (jax.Array, np.ndarray)) or jx.is_tracer(x):
        return f"{_kind(x)} {np.dtype(x.dtype).name}{list(np.shape(x))}"
    return f"{type(x).__name__} {x!r:.40}"


def _kind(x: Any) -> str:
    return "np.ndarray" if isinstance(x, np.ndarray) else "jax.Array"


def _recording_of(target: Any, source: Any, tape: Any) -> Recording | None:
    if tape is not None:
        rec: Recording | None = tape._recording
        return rec
    for x in (target, source):
        if type(x) is EagerTensor and x.recording is not None:
            return x.recording
    return None


def _tapes(rec: Recording | None, tape: Any) -> list[Any]:
    if tape is not None:
        return [tape]
    return list(rec.tapes) if rec is not None else []


def _watch_summary(rec: Recording | None, tapes: list[Any]) -> str:
    """What each tape watches, in words."""
    if rec is None or not tapes:
        return " No tape recorded anything yet."
    lines = []
    for i, t in enumerate(tapes):
        names = [_leaf_name(rec, rec.graph.nodes[n]) for n in sorted(t._watch_since)]
        shown = ", ".join(names) if names else "nothing"
        lines.append(f" Tape {i} (persistent={t.persistent}, watch_accessed_variables="
                     f"{t.watch_accessed_variables}) watches: {shown}.")
    return "".join(lines)


def _leaf_name(rec: Recording, node: Node) -> str:
    if node.op == PLACEHOLDER:
        if node.id in _array_leaves(rec):
            return f"array %{node.id} {node.output.dtype.name}{list(node.output.shape)}" + \
                _where(rec, node, "entered the tape")
        return f"variable {node.name!r}"
    return f"tensor %{node.id} ({node.op_name})"


def _unrecorded_target(target: Any, source: Any, rec: Recording | None, tapes: list[Any]
                       ) -> str:
    head = _HEAD.format(t=_name(target), s=_name(source))
    if isinstance(target, (jax.Array, np.ndarray)) or jx.is_tracer(target):
        return (f"{head}: the target is a plain {_kind(target)}, not a value a tape "
                "recorded. It was computed with jax.numpy functions or a jax.Array's Python "
                "operators (e.g. `x * x` on a watched jax.Array), which no tape sees. Fix: "
                "compute with ap.* ops (ap.multiply(x, x)), or make x = ap.constant(value) "
                "(whose Python operators are recorded) and watch that."
                + _watch_summary(rec, tapes))
    if type(target) is EagerTensor:
        return (f"{head}: the target was computed eagerly and not recorded: none of its "
                "inputs was watched by a recording tape when it was computed (or it was "
                "computed inside tape.stop_recording(), or outside the `with` block). Fix: "
                "watch the source (tape.watch(x)) before computing from it, inside the block."
                + _watch_summary(rec, tapes))
    return (f"{head}: the target is a {type(target).__name__}, not a tensor: nothing was "
            "recorded. Fix: compute it with ap.* ops from watched values.")


def _not_watched(source: Any, rec: Recording | None, tape: Any, head: str) -> str:
    xs = rec.source_nodes(source) if rec is not None else []
    others = [i for i, t in enumerate(rec.tapes) if t is not tape
              and any(x.node.id in t._watch_since for x in xs)] if rec is not None else []
    why = "the source is not watched by this tape"
    if isinstance(source, Variable):
        if not source.trainable:
            why += " (the variable has trainable=False: only tape.watch(v) watches it)"
        elif not tape.watch_accessed_variables:
            why += " (the tape has watch_accessed_variables=False: call tape.watch(v))"
        else:
            why += " (it was read only while this tape was not recording)"
    also = f"; tape(s) {others} of this recording watch it" if others else ""
    return (f"{head}: {why}{also}. Fix: tape.watch(source) inside the `with` block, before "
            "computing from it." + _watch_summary(rec, [tape]))


def _tape_sees(tape: Any, rec: Recording | None, source: Any, counted: set[int]) -> bool:
    """Whether `tape` watches `source` or recorded it (an intermediate it counts)."""
    if isinstance(source, Variable) and tape._watches_variable(source):
        return True
    xs = rec.source_nodes(source) if rec is not None else []
    return any(x.node.id in counted for x in xs)


def _explain_eager(target: Any, source: Any, tape: Any) -> str:
    head = _HEAD.format(t=_name(target), s=_name(source))
    dtype = np.dtype(getattr(source, "dtype", np.float32))
    if not jnp.issubdtype(dtype, jnp.inexact):
        return (f"{head}: the source is of dtype {dtype.name}; integers have no derivative "
                "(tape.gradient raises DerivativeError for it). Fix: make the source floating "
                "point.")
    rec = _recording_of(target, source, tape)
    if rec is None:
        return _unrecorded_target(target, source, None, _tapes(None, tape)) if tape is None \
            else _not_watched(source, None, tape, head)
    with rec.lock:  # the graph and the tapes' views hold still while walked
        return _explain_recorded(target, source, tape, rec, head)


def _explain_recorded(target: Any, source: Any, tape: Any, rec: Recording, head: str) -> str:
    tapes = _tapes(rec, tape)
    counted = tape._counted(rec) if tape is not None else None
    if tape is not None and not _tape_sees(tape, rec, source, counted or set()):
        return _not_watched(source, rec, tape, head)
    y = rec.target_node(target)
    if y is None:
        return _unrecorded_target(target, source, rec, tapes)
    xs = rec.source_nodes(source)
    if counted is not None:
        xs = [x for x in xs if x.node.id in counted]
    if not xs:
        return (f"{head}: the variable was never read while the tape recorded, so nothing "
                "recorded uses it. Fix: read it inside the `with` block (ap ops on it, or "
                "v.read_value())." + _watch_summary(rec, tapes))
    status, cuts = _diagnose(rec.graph, y, xs, counted)
    if status == "connected":
        return (f"{head.replace(' is None', ' is not None')}: the target depends on the "
                "source through recorded differentiable ops.")
    if status == "cut":
        return f"{head}: {_describe_cuts(rec, cuts)}."
    watched = {n for t in tapes for n in t._watch_since}
    hidden = _unwatched_leaves(rec, y, watched)
    note = ""
    if hidden:
        names = ", ".join(_leaf_name(rec, n) for n in hidden)
        note = (f" It depends on arrays that entered the tape unwatched: {names}. If one was "
                "computed from the source with jax.numpy or a jax.Array's Python operators, "
                "that step is invisible to the tape: use ap.* ops for it.")
    return f"{head}: the source is never used: the target does not depend on it.{note}"


# ----------------------------------------------------------------------------------------------
# Graphs
# ----------------------------------------------------------------------------------------------

def _graph_source(graph: Graph, source: Any) -> Tensor | None:
    if isinstance(source, Tensor):
        return source if source.graph is graph else None
    if isinstance(source, Variable):
        reads: dict[Any, Tensor] = graph.__dict__.get("_variable_reads", {})
        return reads.get(source)
    return None


def _explain_graph(target: Tensor, source: Any) -> str:
    graph = target.graph
    head = _HEAD.format(t=f"graph tensor %{target.node.id} ({target.node.op_name})",
                        s=_graph_name(source))
    x = _graph_source(graph, source)
    if x is None:
        if isinstance(source, Tensor):
            return f"{head}: the source belongs to another graph than the target."
        if isinstance(source, Variable):
            return (f"{head}: the variable is never read in the target's graph. Fix: use it "
                    "in an op inside `with graph:`.")
        return f"{head}: the source is not a tensor or variable of the target's graph."
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return f"{head}: the source is of dtype {x.dtype.name}; integers have no derivative."
    status, cuts = _diagnose(graph, target, [x], None)
    if status == "connected":
        return (f"{head.replace(' is None', ' is not None')}: the target depends on the "
                "source through differentiable ops.")
    if status == "cut":
        return f"{head}: {_describe_cuts(None, cuts)}."
    return f"{head}: the source is never used: the target does not depend on it."


def _graph_name(source: Any) -> str:
    if isinstance(source, Tensor):
        return f"graph tensor %{source.node.id} ({source.node.op_name})"
    return _name(source)


# ----------------------------------------------------------------------------------------------
# The warning tape.gradient gives, once per call site
# ----------------------------------------------------------------------------------------------

_warned_sites: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()
_MAX_SITES = 4096


def warn_none_gradient(target: Any, source: Any, tape: Any, depth: int) -> None:
    """Warn (once per call site: the frame `depth` levels up) that `source` got None."""
    frame = sys._getframe(depth)
    site = (frame.f_code.co_filename, frame.f_lineno)
    with _warned_lock:
        if site in _warned_sites or len(_warned_sites) >= _MAX_SITES:
            return
        _warned_sites.add(site)
    text = explain_gradient(target, source, tape)
    warnings.warn(f"adplugin: {text} (ap.explain_gradient(target, source, tape) gives this "
                  "text)", NoneGradientWarning, stacklevel=depth + 1)
