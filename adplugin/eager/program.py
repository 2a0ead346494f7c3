"""Programs of recorded graphs: interpreted the first time, compiled once seen again.

A `Program` computes fixed fetches of a recorded graph from the values of its feeds (leaves).
The first call interprets the graph node by node when the primitives' eager executables mostly
exist already (no compile latency); the second call starts compiling the simplified graph into
one XLA executable in the background, in the caller's JAX configuration (x64, default device,
mesh), and once it is ready every call runs it. A compile that fails is reported once, as a
warning, and the program keeps being interpreted: one bad compile never breaks later calls.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax

from adplugin import _jax_adapter as jx
from adplugin._lru import LRU
from adplugin._params import params_key
from adplugin.ir.graph import Graph, Node, Tensor, needed_nodes
from adplugin.lowering.run import evaluate, simplified_program
from adplugin.placement.execution import PlacedProgram, placement_wanted
from adplugin.placement.execution import interpret as placed_interpret
from adplugin.placement.placer import is_placed

INTERPRET_LIMIT = 8  # ops past known values that are interpreted rather than compiled


class Program:
    """A function of feed values computing fixed fetches of a recorded graph."""

    def __init__(self, graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor],
                 meta: Any = None):
        self.n_feeds = len(feeds)
        self.meta = meta  # what the builder derived along (e.g. which gradients are connected)
        self._graph, self._fetches, self._feeds = graph, list(fetches), list(feeds)
        self._nodes = needed_nodes(graph, fetches, {t.node.id for t in feeds})
        self._signatures = {_signature(n) for n in self._nodes if not isinstance(n.op, str)}
        self._compiled: Callable[..., Any] | None = None
        self._pending: Future[Callable[..., Any]] | None = None
        self._failed = False
        self._lock = threading.Lock()
        self.uses = 0
        self._asks_devices = is_placed(self._nodes)  # a recorded op asked for a device
        self._placed: PlacedProgram | None = None

    def interpret(self, *values: Any) -> list[Any]:
        env = {t.node.id: v for t, v in zip(self._feeds, values)}
        out = evaluate(self._nodes, self._fetches, env)
        _warm.update(self._signatures)
        return out

    def _compile(self, values: Sequence[Any]) -> tuple[Callable[..., Any], list[Any]]:
        """The jitted program and its outputs for `values`: running it once compiles it and
        fills jit's C++ dispatch cache, so later calls take JAX's fastest path."""
        program = jax.jit(simplified_program(self._graph, self._fetches, self._feeds,
                                             self._nodes))
        out = list(program(*values))
        jax.block_until_ready(out)
        return program, out

    def _compile_in(self, config: jx.ConfigSnapshot, values: Sequence[Any]
                    ) -> Callable[..., Any]:
        with config.entered():
            return self._compile(values)[0]

    def __call__(self, values: Sequence[Any]) -> list[Any]:
        if any(jx.is_tracer(v) for v in values):  # inside a JAX trace: inline the ops
            return self.interpret(*values)
        if self._asks_devices or placement_wanted((), values):
            return self._run_placed(values)
        with self._lock:
            self.uses += 1
            compiled = self._take_compiled()
            if compiled is None and not self._failed:
                if self.uses == 1 and self._compile_first():
                    out = self._compile_now(values)
                    if out is not None:
                        return out
                elif self.uses >= 2 and self._pending is None:
                    self._pending = _COMPILER.submit(self._compile_in, jx.ConfigSnapshot(),
                                                     list(values))
        if compiled is not None:
            return list(compiled(*values))
        return self.interpret(*values)

    def _run_placed(self, values: Sequence[Any]) -> list[Any]:
        """Ops asking for devices, or values on several devices: the placer decides where
        each op runs; interpreted the first time, then partitioned and compiled per device."""
        with self._lock:
            self.uses += 1
            first = self.uses == 1
            if not first and self._placed is None:
                self._placed = PlacedProgram(self._graph, self._fetches, self._feeds,
                                             self._nodes, pin_feeds=True)
        if first:
            env = {t.node.id: v for t, v in zip(self._feeds, values)}
            return placed_interpret(self._graph, self._nodes, self._fetches, env)
        assert self._placed is not None
        return self._placed(*values)

    def _take_compiled(self) -> Callable[..., Any] | None:
        if self._compiled is None and self._pending is not None and self._pending.done():
            pending, self._pending = self._pending, None
            try:
                self._compiled = pending.result()
            except Exception as e:  # noqa: BLE001 - reported, then interpreted
                self._fail(e)
        return self._compiled

    def _compile_now(self, values: Sequence[Any]) -> list[Any] | None:
        """Compile and run now; the outputs, or None if compiling failed (reported)."""
        try:
            self._compiled, out = self._compile(values)
        except Exception as e:  # noqa: BLE001 - reported, then interpreted
            self._fail(e)
            return None
        return out

    def _fail(self, error: Exception) -> None:
        self._failed = True
        warnings.warn(f"adplugin: compiling a recorded program failed ({type(error).__name__}: "
                      f"{error}); it runs interpreted op by op from now on", RuntimeWarning,
                      stacklevel=4)

    def _compile_first(self) -> bool:
        """Whether compiling the whole program now beats interpreting it: interpreting
        compiles each new (primitive, params, operand types) executable, about 30 ms each;
        compiling the program costs about 1.5 ms per node (measured on a 2-core CPU)."""
        cold = len(self._signatures - _warm.keys())
        return cold * _COMPILE_OP_S > len(self._nodes) * _COMPILE_NODE_S

    def wait_compiled(self) -> None:
        """Block until the compiled executable is in use (for benchmarks and tests)."""
        pending = self._pending
        if pending is not None:
            pending.exception()
            with self._lock:
                self._take_compiled()


def _signature(node: Node) -> Any:
    """What selects a primitive's eager executable: the primitive, params and operand types."""
    try:
        params = params_key(node.params)
    except TypeError:
        params = id(node)  # type: ignore[assignment]
    return (node.op, params, tuple((i.shape, i.dtype) for i in node.inputs))


class _WarmSignatures:
    """A bounded record of signatures whose eager executables exist (a heuristic only)."""

    def __init__(self, maxsize: int):
        self._lru: LRU[bool] = LRU(maxsize)

    def update(self, signatures: set[Any]) -> None:
        for s in signatures:
            self._lru.get_or_build(s, lambda: True)

    def keys(self) -> set[Any]:
        return set(self._lru.keys())


_warm = _WarmSignatures(4096)
_COMPILE_OP_S = 0.03  # compiling one primitive's eager executable
_COMPILE_NODE_S = 0.0015  # compiling one node as part of a whole program
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adplugin-compile")
_PROGRAMS: LRU[Program] = LRU(512)


def cached_program(key: Hashable, build: Callable[[], Program]) -> Program:
    """The program cached under `key` (everything its computation depends on), or a new one."""
    return _PROGRAMS.get_or_build(key, build)
