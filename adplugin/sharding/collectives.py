"""`ap.collectives(compiled)`: every collective of a compiled XLA program, as a table.

XLA's SPMD partitioner inserts the collectives at compile time, so they exist only in the
optimized HLO (`compiled.as_text()`), and once there their origin is hard to see. This module
reads that HLO (every computation: fusions, loop bodies, async wrappers) and gives one row per
collective with its kind, the arrays it moves, its device groups, the mesh axes those groups
span, and the `op_name` and source line XLA kept in the instruction's metadata.

Bytes convention (`nbytes`, per device, of the logical buffer the collective works on):
all-reduce, reduce-scatter, all-to-all, collective-permute, collective-broadcast: the operand
bytes; all-gather: the result (gathered) bytes; ragged-all-to-all: the input buffer (the bytes
really sent depend on the runtime sizes). `wire_bytes` estimates what each device sends under
the usual ring / direct algorithms. Async pairs (`all-gather-start` / `-done`) are one row.
Counts are static: a collective in a loop body is one row however many times it runs.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import jax
import numpy as np

from adplugin._errors import AdpluginError, message
from adplugin._table import columns
from adplugin.sharding.axes import MeshLayout
from adplugin.sharding.hlo import (
    ArrayShape,
    Groups,
    HloModule,
    Instruction,
    parse_module,
    parse_pairs,
    parse_replica_groups,
    parse_shape,
)

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
         "collective-broadcast", "ragged-all-to-all")


class CollectivesError(AdpluginError, ValueError):
    """`ap.collectives` / `ap.compare_collectives` got something they cannot read."""


# ---------------------------------------------------------------------------------------------
# rows

@dataclass(frozen=True)
class Operand:
    """One array a collective moves (a combined collective has several)."""

    shape: str                 # operand shape, e.g. 'f32[32,16]'
    result: str                # result shape (differs for all-gather and reduce-scatter)
    nbytes: int                # bytes under the module's convention
    op_name: str | None        # this operand's op_name when XLA kept one, else the row's
    source: str | None         # 'file.py:12'


@dataclass(frozen=True)
class Collective:
    """One collective of the compiled program (see the module docstring for `nbytes`)."""

    kind: str                                   # one of KINDS
    name: str                                   # the HLO instruction's name
    computation: str                            # the HLO computation holding it
    is_async: bool                              # a `*-start`/`*-done` pair or async wrapper
    operands: tuple[Operand, ...]
    nbytes: int                                 # summed over operands
    replica_groups: tuple[tuple[int, ...], ...]  # device ids (positions in the assignment)
    source_target_pairs: tuple[tuple[int, int], ...]  # collective-permute only
    channel_id: int | None
    use_global_device_ids: bool
    dimensions: tuple[int, ...]                 # gathered / scattered / split dimensions
    reduce_op: str | None                       # 'add', 'maximum', ... for reductions
    axes: tuple[str, ...] | None                # mesh axes spanned; None: no mesh or not axes
    op_name: str | None
    source_file: str | None
    source_line: int | None
    stack: tuple[str, ...]                      # 'file:line (function)', innermost first

    @property
    def group_size(self) -> int:
        if self.kind == "collective-permute":
            return 2 if self.source_target_pairs else 1
        return len(self.replica_groups[0]) if self.replica_groups else 1

    @property
    def source(self) -> str | None:
        if self.source_file is None:
            return None
        return f"{os.path.basename(self.source_file)}:{self.source_line}"

    @property
    def op_names(self) -> tuple[str, ...]:
        """Distinct op_names of the operands (a combined collective has one per operand)."""
        names = [o.op_name for o in self.operands if o.op_name] or [self.op_name or ""]
        return tuple(dict.fromkeys(n for n in names if n))

    @property
    def wire_bytes(self) -> float:
        """Bytes each device sends: ring all-reduce 2(n-1)/n, gather/scatter/all-to-all (n-1)/n."""
        n = self.group_size
        if n <= 1:
            return 0.0
        factor = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0,
                  "collective-broadcast": 1.0}.get(self.kind, (n - 1) / n)
        return self.nbytes * factor


# ---------------------------------------------------------------------------------------------
# the table

class Collectives(Sequence[Collective]):
    """The collectives of one program: `.rows`, `.table()`, `.total_bytes`, `.by_kind()`."""

    def __init__(self, rows: Sequence[Collective], mesh_axes: dict[str, int] | None = None,
                 module: str = "") -> None:
        self.rows = list(rows)
        self.mesh_axes = mesh_axes        # the mesh that named `axes` (name -> size)
        self.module = module

    @overload
    def __getitem__(self, i: int) -> Collective: ...
    @overload
    def __getitem__(self, i: slice) -> Collectives: ...

    def __getitem__(self, i: int | slice) -> Collective | Collectives:
        if isinstance(i, slice):
            return Collectives(self.rows[i], self.mesh_axes, self.module)
        return self.rows[i]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Collective]:
        return iter(self.rows)

    @property
    def total_bytes(self) -> int:
        return sum(r.nbytes for r in self.rows)

    def by_kind(self) -> dict[str, Collectives]:
        """One sub-table per kind present, in the order of KINDS."""
        return {k: Collectives([r for r in self.rows if r.kind == k], self.mesh_axes,
                               self.module)
                for k in KINDS if any(r.kind == k for r in self.rows)}

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "mesh_axes": self.mesh_axes,
                "total_bytes": self.total_bytes,
                "rows": [dict(asdict(r), source=r.source) for r in self.rows]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """An aligned text table, one line per operand group, and a total line."""
        head = ("kind", "axes" if self.mesh_axes is not None else "groups", "shape", "bytes",
                "op_name", "source")
        lines: list[tuple[str, ...]] = [head]
        for r in self.rows:
            where = _axes_text(r) if self.mesh_axes is not None else _groups_text(r)
            for i, (shape, nbytes, op_name, source) in enumerate(_display_operands(r)):
                kind = (r.kind + ("*" if r.is_async else "")) if i == 0 else "  +"
                lines.append((kind, where if i == 0 else "", shape, str(nbytes), op_name,
                              source))
        out = columns(lines, right=(3,))
        kinds = ", ".join(f"{k} {len(v)}" for k, v in self.by_kind().items())
        out.append(f"total: {len(self)} collective{'s' * (len(self) != 1)}, "
                   f"{self.total_bytes} bytes per device" + (f" ({kinds})" if kinds else ""))
        if any(r.is_async for r in self.rows):
            out.append("* async (start/done pair)")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<Collectives of {self.module or 'a program'}: {len(self)} rows, " \
               f"{self.total_bytes} bytes>"


def _axes_text(r: Collective) -> str:
    if r.axes is None:
        return "?"
    return ",".join(r.axes) if r.axes else "-"


def _groups_text(r: Collective) -> str:
    if r.kind == "collective-permute":
        return f"{len(r.source_target_pairs)} pairs"
    return f"{len(r.replica_groups)}x{r.group_size}"


def _display_operands(r: Collective) -> list[tuple[str, int, str, str]]:
    """Operands with the same op_name and source merged into one line ('4x f32[1,4]')."""
    groups: dict[tuple[str, str], list[Operand]] = {}
    for o in r.operands:
        groups.setdefault((o.op_name or "", o.source or ""), []).append(o)
    out = []
    for (op_name, source), ops in groups.items():
        shapes = [o.shape if o.shape == o.result else f"{o.shape}->{o.result}" for o in ops]
        counted = dict.fromkeys(shapes)
        shape = ", ".join(f"{shapes.count(s)}x {s}" if shapes.count(s) > 1 else s
                          for s in counted)
        out.append((shape, sum(o.nbytes for o in ops), op_name, source))
    return out


# ---------------------------------------------------------------------------------------------
# entry point

def collectives(program: Any, mesh: Any = None) -> Collectives:
    """Every collective of a compiled XLA program, mapped back to its source.

    `program`: a `jax.stages.Compiled` (`jax.jit(f).lower(*args).compile()`), a
    `jax.stages.Lowered` (compiled here), or the optimized HLO text (`compiled.as_text()`).
    `mesh`: a `jax.sharding.Mesh` (or `AbstractMesh`) to name the axes each collective spans;
    by default the mesh of the program's `NamedSharding` arguments, if it has one.
    """
    text, assignment, found_mesh = _program_text(program)
    module = parse_module(text)
    mesh = mesh if mesh is not None else found_mesh
    layout = _layout(mesh, assignment, module.num_devices) if mesh is not None else None
    rows = _Reader(module, layout).rows()
    return Collectives(rows, layout.axes if layout else None, module.name)


def _program_text(program: Any) -> tuple[str, list[int] | None, Any]:
    if isinstance(program, jax.stages.Lowered):
        program = program.compile()
    if isinstance(program, jax.stages.Compiled):
        text = program.as_text()
        if not text:
            raise CollectivesError(message(
                "collectives", "the compiled program has no HLO text", type(program).__name__,
                "a program whose backend prints its optimized HLO", "compile on CPU/GPU/TPU"))
        return text, _device_assignment(program), _mesh_of(program)
    if isinstance(program, str):
        head = program.lstrip()[:200]
        if head.startswith("module") or "func.func" in head:
            raise CollectivesError(message(
                "collectives", "got StableHLO, which has no collectives yet", "lowered.as_text()",
                "the optimized HLO, where XLA's partitioner has inserted them",
                "pass `lowered.compile()` or `lowered.compile().as_text()`"))
        return program, None, None
    if isinstance(program, jax.stages.Wrapped) or callable(program):
        raise CollectivesError(message(
            "collectives", "got a function, not a compiled program",
            getattr(program, "__name__", type(program).__name__),
            "a jax.stages.Compiled, jax.stages.Lowered or HLO text",
            "lower and compile it first: ap.collectives(jax.jit(f).lower(*args).compile())"))
    raise CollectivesError(message(
        "collectives", "cannot read this program", type(program).__name__,
        "a jax.stages.Compiled, jax.stages.Lowered or HLO text",
        "pass jax.jit(f).lower(*args).compile()"))


def _device_assignment(compiled: Any) -> list[int] | None:
    """Device ids in the program's order (logical id i runs on the i-th), when JAX says."""
    try:
        devices = compiled.runtime_executable().local_devices()
        return [int(d.id) for d in devices]
    except Exception:  # not every backend or JAX version exposes it
        return None


def _mesh_of(compiled: Any) -> Any:
    """The mesh of the first NamedSharding among the program's arguments and results."""
    try:
        leaves = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    except Exception:
        return None
    for s in leaves:
        if isinstance(s, jax.sharding.NamedSharding) and s.mesh.size > 1:
            return s.mesh
    return None


# ---------------------------------------------------------------------------------------------
# the mesh that names the axes

def _layout(mesh: Any, assignment: list[int] | None, num_devices: int) -> MeshLayout:
    """Axis names and sizes of `mesh`, and where each of the program's devices sits in it."""
    names = tuple(str(n) for n in getattr(mesh, "axis_names", ()))
    sizes = tuple(int(s) for s in getattr(mesh, "axis_sizes", ()))
    if not names or len(names) != len(sizes):
        raise CollectivesError(message(
            "collectives", "mesh= is not a mesh", type(mesh).__name__,
            "a jax.sharding.Mesh or AbstractMesh", "pass the mesh the program was built on"))
    if math.prod(sizes) != num_devices:
        raise CollectivesError(message(
            "collectives", "the mesh and the program have different device counts",
            f"mesh {dict(zip(names, sizes))} ({math.prod(sizes)} devices)",
            f"a mesh of the program's {num_devices} devices",
            "pass the mesh the program was sharded over"))
    position = tuple(range(num_devices))
    devices = getattr(mesh, "devices", None)
    if assignment is not None and isinstance(devices, np.ndarray):
        flat = {int(d.id): i for i, d in enumerate(devices.flat)}
        if sorted(flat) != sorted(assignment):
            raise CollectivesError(message(
                "collectives", "the mesh holds other devices than the program runs on",
                f"mesh devices {sorted(flat)}", f"the program's devices {assignment}",
                "pass the mesh the program was sharded over"))
        position = tuple(flat[d] for d in assignment)
    return MeshLayout(names, sizes, position)


# ---------------------------------------------------------------------------------------------
# reading the module

def _kind(opcode: str) -> tuple[str | None, bool]:
    """('all-gather', True) for 'all-gather-start'; (None, _) for '-done' and other ops."""
    if opcode in KINDS:
        return opcode, False
    if opcode.endswith("-start") and opcode[:-len("-start")] in KINDS:
        return opcode[:-len("-start")], True
    return None, False


class _Reader:
    def __init__(self, module: HloModule, layout: MeshLayout | None) -> None:
        self.module = module
        self.layout = layout
        self.by_name: dict[str, Instruction] = {}
        self.users: dict[str, list[Instruction]] = {}
        self.async_starts: dict[str, Instruction] = {}   # wrapped computation -> async-start
        self.sugared: set[str] = set()                   # computations of `X-start` ops
        for instrs in module.computations.values():
            for ins in instrs:
                self.by_name[ins.name] = ins
                for op in ins.operands:
                    self.users.setdefault(op, []).append(ins)
                called = ins.attrs.get("calls", "").lstrip("%")
                if called and ins.opcode == "async-start":
                    self.async_starts[called] = ins
                elif called and _kind(ins.opcode)[1]:
                    self.sugared.add(called)

    def rows(self) -> list[Collective]:
        out = []
        for comp, instrs in self.module.computations.items():
            if comp in self.sugared:
                continue                    # counted at its `X-start`
            for ins in instrs:
                kind, is_async = _kind(ins.opcode)
                if kind is not None:
                    out.append(self.row(ins, kind, is_async or comp in self.async_starts))
        return out

    def row(self, ins: Instruction, kind: str, is_async: bool) -> Collective:
        start = self.async_starts.get(ins.computation)
        meta = ins.metadata or (start.metadata if start is not None else {})
        # the instruction holding the result: the `-done` of an async pair, else the op itself
        done = self._done(start or ins) if is_async else None
        holder = done if done is not None else ins
        per_operand = self._operand_arrays(ins)
        if kind == "ragged-all-to-all" or (kind == "collective-permute" and _in_place(per_operand)):
            per_operand = per_operand[:1]           # the data; the rest: buffers, offsets, sizes
        operands = [a for arrays in per_operand for a in arrays]
        results = list((done if ins.opcode.endswith("-start") and done else ins).arrays)
        attrs = ins.attrs
        groups: Groups = ()
        pairs: tuple[tuple[int, int], ...] = ()
        if "source_target_pairs" in attrs:
            pairs = parse_pairs(attrs["source_target_pairs"])
        else:
            groups = parse_replica_groups(attrs.get("replica_groups", "{}"),
                                          self.module.num_devices)
        group_size = len(groups[0]) if groups else 1
        if len(results) != len(operands):
            results = [_gathered(a, kind, attrs, group_size) for a in operands]
        names = self._operand_names(holder, meta, len(operands))
        ops = tuple(
            Operand(str(a), str(r), (r if kind == "all-gather" else a).nbytes, op, src)
            for a, r, (op, src) in zip(operands, results, names))
        source_file, source_line, stack = self._source(meta)
        axes = None
        if self.layout is not None:
            axes = self.layout.axes_of_pairs(pairs) if "source_target_pairs" in attrs else \
                self.layout.axes_of_groups(groups)
        channel = attrs.get("channel_id")
        return Collective(
            kind=kind, name=ins.name, computation=ins.computation, is_async=is_async,
            operands=ops, nbytes=sum(o.nbytes for o in ops), replica_groups=groups,
            source_target_pairs=pairs, channel_id=int(channel) if channel else None,
            use_global_device_ids=attrs.get("use_global_device_ids") == "true",
            dimensions=tuple(int(d) for d in re.findall(r"\d+", attrs.get("dimensions", ""))),
            reduce_op=self._reduce_op(attrs.get("to_apply")), axes=axes,
            op_name=meta.get("op_name"), source_file=source_file, source_line=source_line,
            stack=stack)

    def _done(self, start: Instruction) -> Instruction | None:
        for user in self.users.get(start.name, []):
            if user.opcode.endswith("-done"):
                return user
        return None

    def _operand_arrays(self, ins: Instruction) -> list[tuple[ArrayShape, ...]]:
        """The arrays of each operand (a tuple-shaped operand has several)."""
        out: list[tuple[ArrayShape, ...]] = []
        for name, inline in zip(ins.operands, ins.operand_shapes):
            if inline is not None:
                out.append(parse_shape(inline))
            elif name in self.by_name:
                out.append(self.by_name[name].arrays)
            else:
                raise CollectivesError(message(
                    "collectives", f"operand {name!r} of {ins.name!r} is defined nowhere",
                    f"{ins.opcode}({', '.join(ins.operands)[:200]})",
                    "complete HLO text of one module", "pass compiled.as_text() whole"))
        return out

    def _operand_names(self, holder: Instruction, meta: dict[str, str],
                       n: int) -> list[tuple[str | None, str | None]]:
        """(op_name, source) per operand: from the get-tuple-elements that unpack a combined
        collective (XLA keeps each original op's metadata there), else from the merged name."""
        op_name = meta.get("op_name")
        split = split_merged_op_name(op_name) if op_name else []
        default_src = self._source(meta)
        out: list[tuple[str | None, str | None]] = [
            (split[i] if len(split) == n else op_name, _short(default_src)) for i in range(n)]
        if n > 1:
            for user in self.users.get(holder.name, []):
                idx = user.attrs.get("index")
                meta = user.metadata
                if user.opcode == "get-tuple-element" and idx is not None and \
                        int(idx) < n and "op_name" in meta:
                    out[int(idx)] = (meta["op_name"], _short(self._source(meta)))
        return out

    def _source(self, meta: dict[str, str]) -> tuple[str | None, int | None, tuple[str, ...]]:
        if "stack_frame_id" in meta:
            stack = self.module.frames.stack(int(meta["stack_frame_id"]))
            if stack:
                return stack[0].file, stack[0].line, tuple(str(f) for f in stack)
        if "source_file" in meta:
            return meta["source_file"], int(meta.get("source_line", 0)), ()
        return None, None, ()

    def _reduce_op(self, to_apply: str | None) -> str | None:
        if not to_apply:
            return None
        body = self.module.computations.get(to_apply.lstrip("%"), [])
        return body[-1].opcode if body else None


def _in_place(per_operand: list[tuple[ArrayShape, ...]]) -> bool:
    """A collective-permute of (input, output buffer, input offsets, output offsets), the
    offsets integer scalars, rather than a combined one of four arrays."""
    return len(per_operand) == 4 and all(
        a.dtype[0] in "su" and not a.dims for arrays in per_operand[2:] for a in arrays)


def _short(src: tuple[str | None, int | None, tuple[str, ...]]) -> str | None:
    return f"{os.path.basename(src[0])}:{src[1]}" if src[0] is not None else None


def _gathered(a: ArrayShape, kind: str, attrs: dict[str, str], n: int) -> ArrayShape:
    """The result of one operand when the HLO does not print it (an async start alone)."""
    dims = [int(d) for d in re.findall(r"\d+", attrs.get("dimensions", ""))]
    if kind not in ("all-gather", "reduce-scatter") or not dims:
        return a
    shape = list(a.dims)
    shape[dims[0]] = shape[dims[0]] * n if kind == "all-gather" else shape[dims[0]] // n
    return ArrayShape(a.dtype, tuple(shape))


def split_merged_op_name(op_name: str) -> list[str]:
    """XLA names a combined op `prefix/(a:b:c)`; give back `[prefix/a, prefix/b, prefix/c]`."""
    if not op_name.endswith(")"):
        return [op_name]
    depth = 0
    for i in range(len(op_name) - 1, -1, -1):
        c = op_name[i]
        depth += c == ")"
        depth -= c == "("
        if depth == 0:
            break
    if depth != 0 or (i > 0 and op_name[i - 1] != "/"):
        return [op_name]
    prefix, inner = op_name[:i], op_name[i + 1:-1]
    parts, depth, start = [], 0, 0
    for j, c in enumerate(inner):
        depth += (c == "(") - (c == ")")
        if c == ":" and depth == 0:
            parts.append(inner[start:j])
            start = j + 1
    parts.append(inner[start:])
    if len(parts) < 2:
        return [op_name]
    return [prefix + p for p in parts]
