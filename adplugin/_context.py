"""The one dispatch context: a stack of scopes, per thread and per task.

Where an op goes (JAX, a graph being built, a tape's recording, a compiled function's trace) is
decided by the innermost `Scope`, held in a `contextvars.ContextVar`: each thread and each
asyncio task sees its own stack, so a graph built in one thread never receives another thread's
ops. A scope is immutable; pushing one copies its parent's fields and overrides some, so every
question dispatch asks ("which graph builds?", "which recording records?") is one attribute
read on the innermost scope.

Each scope remembers the JAX trace that was current when it was pushed. When JAX starts a trace
of its own inside a scope (`jax.jit`, `jax.grad`, `vmap`, ...), the current trace no longer is
that one, and the scope steps aside: ops traced there bind JAX primitives and never land in an
outer graph or recording. `effective()` is the scope that applies now.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from adplugin import _jax_adapter as jx

FORWARD = "forward"
DERIVATIVE = "derivative"


class Scope:
    """One entry of the dispatch stack (immutable once pushed)."""

    __slots__ = ("parent", "owner", "jax_trace", "graph", "role", "recording", "paused",
                 "frame", "device", "colocate", "mesh")

    def __init__(self, parent: Scope | None, owner: Any) -> None:
        self.parent, self.owner = parent, owner
        self.jax_trace = jx.current_trace()
        if parent is None:
            self.graph: Any = None  # the graph that ops on constants alone add nodes to
            self.role = FORWARD  # the role of nodes added to `graph`
            self.recording: Any = None  # the tapes' recording that records ops (eager mode)
            self.paused = False  # inside tape.stop_recording(): compute, do not record
            self.frame: Any = None  # an `ap.function` trace: variables read and written there
            self.device: Any = None  # the requested device (`ap.device`): a DeviceSpec
            self.colocate: Any = None  # `ap.colocate_with(t)`: the tensor new nodes join
            self.mesh: Any = None  # `ap.mesh(m)`: the mesh shardings refer to
        else:
            self.graph, self.role = parent.graph, parent.role
            self.recording, self.paused, self.frame = parent.recording, parent.paused, parent.frame
            self.device, self.colocate = parent.device, parent.colocate
            self.mesh = parent.mesh

    def __repr__(self) -> str:
        return f"<Scope of {self.owner!r}>"


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("adplugin_scope",
                                                                        default=None)


def current() -> Scope | None:
    """The innermost scope, or None outside every scope (ops bind JAX primitives)."""
    return _current.get()


def effective() -> Scope | None:
    """The innermost scope if it applies under the current JAX trace, else None (JAX's)."""
    scope = _current.get()
    if scope is None or scope.jax_trace is jx.current_trace():
        return scope
    return None


def push(owner: Any, **fields: Any) -> Scope:
    """Push a scope owned by `owner` with `fields` overriding the parent's; returns it."""
    scope = Scope(_current.get(), owner)
    for name, value in fields.items():
        setattr(scope, name, value)
    _current.set(scope)
    return scope


def pop(owner: Any) -> None:
    """Pop the innermost scope, which `owner` must have pushed."""
    scope = _current.get()
    if scope is None or scope.owner is not owner:
        raise RuntimeError(
            f"adplugin: scopes closed out of order: closing {owner!r} while the innermost open "
            f"scope is {scope!r}; close `with` blocks in the reverse order they were opened")
    _current.set(scope.parent)


@contextmanager
def scoped(owner: Any, **fields: Any) -> Iterator[Scope]:
    """`with scoped(owner, graph=g):` pushes a scope for the block."""
    scope = push(owner, **fields)
    try:
        yield scope
    finally:
        pop(owner)


class _JaxOwner:
    def __repr__(self) -> str:
        return "JAX evaluation"


JAX_EVALUATION = _JaxOwner()


def jax_evaluation() -> Any:
    """A scope in which every op binds its JAX primitive (used when adplugin evaluates a graph
    on concrete values itself, so nothing lands in a graph or tape the caller is building, and
    the caller's device scope does not move it: a graph runs where its own nodes are placed)."""
    return scoped(JAX_EVALUATION, graph=None, recording=None, paused=False, frame=None,
                  device=None, colocate=None)
