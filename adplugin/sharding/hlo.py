"""A small reader for the HLO text XLA prints (`jax.stages.Compiled.as_text()`).

It reads what the collectives table needs and nothing more: every computation's instructions
(name, result shape, opcode, operand names, attributes), the module's stack-frame tables (how
`metadata={... stack_frame_id=N}` names a source line), and the three ways XLA prints replica
groups. Formats were checked against what jax 0.10.2's XLA prints, e.g.

    %all-reduce.2 = (f32[32,16]{1,0}, f32[4,32]{1,0}) all-reduce(%dot.3, %dot.4), channel_id=1,
        replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, use_global_device_ids=true,
        to_apply=%add.clone, metadata={op_name="jit(step)/(a/dot_general:b/dot_general)"
        stack_frame_id=3}

Replica groups come as a list of lists (`{{0,1},{2,3}}`), as an iota (`[2,4]<=[8]`,
`[4,2]<=[2,4]T(1,0)`: the rows of iota(8) reshaped to [2,4], transposed, reshaped to [4,2]),
or as mesh axes (`mesh['a'=2,'b'=4] {'b'}`, optionally `, device_ids=(...)` and sub-axes
`'b':(1)2`): the groups are the devices of the mesh that differ only along the named axes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from adplugin._errors import AdpluginError


class HloParseError(AdpluginError, ValueError):
    """HLO text that this reader cannot make sense of."""


# ---------------------------------------------------------------------------------------------
# shapes

_SPECIAL_BITS = {"pred": 8, "token": 0, "opaque": 0}
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([^\]]*)\]")


def dtype_bits(dtype: str) -> int:
    """Bits per element: the width in the name (`bf16` 16, `f8e4m3fn` 8, `c64` 64), `pred` 8."""
    if dtype in _SPECIAL_BITS:
        return _SPECIAL_BITS[dtype]
    m = re.match(r"[a-z]+(\d+)", dtype)
    if m is None:
        raise HloParseError(f"unknown HLO element type {dtype!r}")
    return int(m.group(1))


@dataclass(frozen=True)
class ArrayShape:
    """One array of an HLO shape: element type and dimensions (layout dropped)."""

    dtype: str
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.dims)

    @property
    def nbytes(self) -> int:
        """Bytes of the array in memory: elements times element width, rounded up to a byte."""
        return -(-self.size * dtype_bits(self.dtype) // 8)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.dims))}]"


def parse_shape(text: str) -> tuple[ArrayShape, ...]:
    """The arrays of an HLO shape, tuples flattened in order: `(f32[2]{0}, s32[])` -> 2 arrays."""
    out = []
    for m in _ARRAY.finditer(text):
        dims = tuple(int(d.replace("<=", "")) for d in m.group(2).split(",") if d.strip())
        out.append(ArrayShape(m.group(1), dims))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# bracket-aware scanning

_CLOSE = {"(": ")", "{": "}", "[": "]"}


def _match(text: str, i: int) -> int:
    """Index just past the bracket that closes `text[i]`, skipping quoted strings."""
    stack = [_CLOSE[text[i]]]
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == '"':
            j += 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
        elif c in _CLOSE:
            stack.append(_CLOSE[c])
        elif c == stack[-1]:
            stack.pop()
            if not stack:
                return j + 1
        j += 1
    raise HloParseError(f"unbalanced brackets in {text[i:i + 80]!r}")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets and quotes; pieces stripped, empty pieces dropped."""
    pieces, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == sep and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


# ---------------------------------------------------------------------------------------------
# instructions and computations

@dataclass(frozen=True)
class Instruction:
    """One HLO instruction as printed: `[ROOT] %name = shape opcode(operands), attr=value...`."""

    name: str
    opcode: str
    shape: str                                   # the result shape as printed
    operands: tuple[str, ...]                    # operand names, without '%'
    operand_shapes: tuple[str | None, ...]       # shapes printed inline before operands
    attrs: dict[str, str]
    computation: str

    @property
    def arrays(self) -> tuple[ArrayShape, ...]:
        return parse_shape(self.shape)

    @property
    def metadata(self) -> dict[str, str]:
        return parse_metadata(self.attrs.get("metadata", ""))


@dataclass
class HloModule:
    """The computations of a module (instructions in printed order) and its stack frames."""

    name: str
    header: dict[str, str]
    computations: dict[str, list[Instruction]]
    entry: str | None
    frames: StackFrames = field(default_factory=lambda: StackFrames({}, {}, {}, {}))

    @property
    def num_devices(self) -> int:
        """Devices the program runs on: partitions times replicas (both default to 1)."""
        return int(self.header.get("num_partitions", 1)) * int(self.header.get("replica_count", 1))


_COLLECTIVE_HINT = re.compile(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-)")
_INSTR_HEAD = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*")
_COMP_HEAD = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*(?:\(.*)?\{\s*$")


_INDEX_COMMENT = re.compile(r"/\*index=\d+\*/")   # XLA marks every 5th item of long lists


def parse_instruction(line: str, computation: str) -> Instruction | None:
    """One instruction line, or None when the line is not one."""
    line = _INDEX_COMMENT.sub("", line)
    m = _INSTR_HEAD.match(line)
    if m is None:
        return None
    i = m.end()
    if line[i:i + 1] == "(":                     # tuple shape
        j = _match(line, i)
    else:
        j = i
        while j < len(line) and not line[j].isspace():
            j += 1
    shape = line[i:j]
    op = re.compile(r"\s*([\w\-.]+)\(").match(line, j)
    if op is None:
        return None
    k = op.end() - 1
    end = _match(line, k)
    names, inline = [], []
    for piece in split_top(line[k + 1:end - 1]):
        *before, last = piece.rsplit(None, 1) if " " in piece else [piece]
        names.append(last.lstrip("%"))
        inline.append(before[0] if before else None)
    return Instruction(m.group("name").lstrip("%"), op.group(1), shape, tuple(names),
                       tuple(inline), parse_attrs(line[end:]), computation)


def parse_attrs(text: str) -> dict[str, str]:
    """`, key=value, ...` after the operands; a mesh's `device_ids=` stays with replica_groups."""
    attrs: dict[str, str] = {}
    last = ""
    for piece in split_top(text):
        key, _, value = piece.partition("=")
        key = key.strip()
        if key == "device_ids" and last == "replica_groups":
            attrs[last] += ", " + piece
            continue
        attrs[key] = value.strip()
        last = key
    return attrs


_META = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s}]+)')


def parse_metadata(text: str) -> dict[str, str]:
    """`{op_name="..." stack_frame_id=3}` -> {'op_name': '...', 'stack_frame_id': '3'}."""
    out = {}
    for key, value in _META.findall(text.strip().strip("{}")):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key] = value
    return out


def parse_module(text: str) -> HloModule:
    """Parse a whole module printed by XLA (one `HloModule` header, computations, frames)."""
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if not first.startswith("HloModule"):
        raise HloParseError(
            f"not HLO text: it should start with 'HloModule', it starts with {first[:60]!r}")
    name, _, rest = first[len("HloModule"):].strip().partition(",")
    header = dict(_split_kv(p) for p in split_top(rest) if "=" in p)
    tables: dict[str, dict[int, str]] = {}
    computations: dict[str, list[Instruction]] = {}
    entry, current, table = None, None, None
    for line in lines[1:]:
        stripped = line.strip()
        if current is None and stripped in ("FileNames", "FunctionNames", "FileLocations",
                                            "StackFrames"):
            table = tables.setdefault(stripped, {})
            continue
        if table is not None:
            if not stripped:
                table = None
                continue
            key, _, value = stripped.partition(" ")
            table[int(key)] = value.strip()
            continue
        if current is None:
            m = _COMP_HEAD.match(line)
            if m:
                current = m.group("name")
                computations[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if stripped == "}":
            current = None
            continue
        try:
            instr = parse_instruction(line, current)
        except HloParseError:
            if _COLLECTIVE_HINT.search(line):
                raise
            continue                        # a line we do not need and cannot read
        if instr is not None:
            computations[current].append(instr)
    frames = StackFrames(tables.get("FileNames", {}), tables.get("FunctionNames", {}),
                         tables.get("FileLocations", {}), tables.get("StackFrames", {}))
    return HloModule(name.strip(), header, computations, entry, frames)


def _split_kv(piece: str) -> tuple[str, str]:
    key, _, value = piece.partition("=")
    return key.strip(), value.strip()


# ---------------------------------------------------------------------------------------------
# source locations

@dataclass(frozen=True)
class Frame:
    file: str
    function: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"


class StackFrames:
    """The module's `FileNames` / `FunctionNames` / `FileLocations` / `StackFrames` tables.

    A frame names a file location and its caller's frame. XLA (jax 0.10.2) prints every
    `parent_frame_id` one higher than the caller's id, so the outermost frame 1 prints as its
    own parent; we detect that (a caller id never exceeds or equals its callee's) and undo it.
    """

    def __init__(self, files: dict[int, str], functions: dict[int, str],
                 locations: dict[int, str], frames: dict[int, str]) -> None:
        self._files = {k: _unquote(v) for k, v in files.items()}
        self._functions = {k: _unquote(v) for k, v in functions.items()}
        self._locations = {k: _braced_ints(v) for k, v in locations.items()}
        self._frames = {k: _braced_ints(v) for k, v in frames.items()}
        parents = {k: f.get("parent_frame_id", 0) for k, f in self._frames.items()}
        self._shift = 1 if any(p >= k for k, p in parents.items()) else 0

    def frame(self, frame_id: int) -> Frame | None:
        f = self._frames.get(frame_id)
        loc = self._locations.get(f.get("file_location_id", 0)) if f else None
        if loc is None:
            return None
        return Frame(self._files.get(loc.get("file_name_id", 0), "?"),
                     self._functions.get(loc.get("function_name_id", 0), "?"),
                     loc.get("line", 0))

    def stack(self, frame_id: int) -> tuple[Frame, ...]:
        """The frame and its callers, innermost first."""
        out: list[Frame] = []
        seen: set[int] = set()
        while frame_id > 0 and frame_id not in seen:
            seen.add(frame_id)
            fr = self.frame(frame_id)
            if fr is None:
                break
            out.append(fr)
            frame_id = self._frames[frame_id].get("parent_frame_id", 0) - self._shift
        return tuple(out)


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text


def _braced_ints(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", text)}


# ---------------------------------------------------------------------------------------------
# replica groups

Groups = tuple[tuple[int, ...], ...]
_IOTA = re.compile(r"^\[([\d,\s]+)\]<=\[([\d,\s]+)\](?:T\(([\d,\s]+)\))?$")


def iota_array(reshape_dims: list[int], perm: list[int] | None, dims: list[int]) -> np.ndarray:
    """`[dims]<=[reshape_dims]T(perm)`: iota reshaped, transposed by perm, reshaped to dims."""
    a = np.arange(math.prod(reshape_dims)).reshape(reshape_dims)
    if perm is not None:
        a = a.transpose(perm)
    return a.reshape(dims)


def _ints(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"-?\d+", text)]


def parse_replica_groups(text: str, num_devices: int) -> Groups:
    """Expand any printed form of `replica_groups=` to explicit groups of device ids.

    An empty list (`{}`) means one group of all `num_devices`.
    """
    text = text.strip()
    if text.startswith("mesh[") or text.startswith("maximal_mesh["):
        return parse_mesh_groups(text)
    m = _IOTA.match(text)
    if m:
        dims, reshape = _ints(m.group(1)), _ints(m.group(2))
        perm = _ints(m.group(3)) if m.group(3) else None
        return tuple(tuple(int(d) for d in row) for row in iota_array(reshape, perm, dims))
    if text.startswith("{"):
        inner = text[1:-1].strip()
        if not inner:
            return (tuple(range(num_devices)),)
        return tuple(tuple(_ints(g)) for g in split_top(inner))
    raise HloParseError(f"unknown replica_groups form {text!r}")


def parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """`source_target_pairs={{0,1},{1,0}}` -> ((0, 1), (1, 0))."""
    pairs = [tuple(_ints(p)) for p in split_top(text.strip()[1:-1])]
    return tuple((p[0], p[1]) for p in pairs)


# `mesh['a'=2,'b'=4], device_ids=([2,4]T(1,0)) {'b','a':(1)2}`
_MESH = re.compile(r"^mesh\[(?P<axes>[^\]]*)\]\s*(?:,\s*device_ids=\((?P<ids>.*)\))?\s*"
                   r"\{(?P<grouped>[^}]*)\}\s*$")
_SUB = re.compile(r"^(?P<name>.+?)(?::\((?P<pre>\d+)\)(?P<size>\d+))?$")


def parse_mesh_groups(text: str) -> Groups:
    """Groups of the mesh-axes form (see the module docstring)."""
    if text.startswith("maximal_mesh["):
        return (tuple(_ints(text)[:1]),)
    m = _MESH.match(text)
    if m is None:
        raise HloParseError(f"unknown mesh replica_groups form {text!r}")
    names, sizes = [], []
    for piece in split_top(m.group("axes")):
        key, _, value = piece.rpartition("=")
        names.append(_unquote(key.strip().strip("'")))
        sizes.append(int(value))
    devices = _mesh_device_ids(m.group("ids"), sizes)
    grouped: list[tuple[int, int | None, int | None]] = []
    for piece in split_top(m.group("grouped")):
        s = _SUB.match(piece.strip())
        assert s is not None
        name = s.group("name").strip().strip("'")
        if name not in names:
            raise HloParseError(f"replica_groups name axis {name!r} not in the mesh {names}")
        pre = int(s.group("pre")) if s.group("pre") else None
        size = int(s.group("size")) if s.group("size") else None
        grouped.append((names.index(name), pre, size))
    return groups_over_axes(devices, grouped)


def _mesh_device_ids(text: str | None, sizes: list[int]) -> np.ndarray:
    n = math.prod(sizes)
    if text is None:
        return np.arange(n).reshape(sizes)
    text = text.strip()
    m = re.match(r"^\[([\d,\s]+)\](?:<=\[([\d,\s]+)\])?(?:T\(([\d,\s]+)\))?$", text)
    if m and math.prod(_ints(m.group(1))) == n and (m.group(2) or m.group(3)):
        # iota form: `[reshape]T(perm)` (as XLA prints a mesh) or `[dims]<=[reshape]T(perm)`
        reshape = _ints(m.group(2) or m.group(1))
        perm = _ints(m.group(3)) if m.group(3) else None
        return iota_array(reshape, perm, sizes)
    ids = _ints(text)
    if len(ids) != n:
        raise HloParseError(f"mesh device_ids {text!r} do not hold {n} devices")
    return np.array(ids).reshape(sizes)


def groups_over_axes(devices: np.ndarray,
                     grouped: list[tuple[int, int | None, int | None]]) -> Groups:
    """The groups of devices that differ only along `grouped` axes of the device array.

    `grouped` lists (axis, pre, size): a whole axis (pre, size None) or its sub-axis `(pre)size`,
    which views an axis of size n as [pre, size, n // (pre*size)] (major to minor) and takes
    the middle factor. Group members are ordered by the listed axes, the first one major.
    """
    sizes = list(devices.shape)
    factors: list[list[int]] = []        # each mesh axis split into factors
    slot: dict[int, int] = {}            # position in `grouped` -> flat factor index
    offset = 0
    for axis, n in enumerate(sizes):
        refs = [(i, g) for i, g in enumerate(grouped) if g[0] == axis]
        dims: list[int] = []
        if len(refs) == 1 and refs[0][1][1] is None:
            dims = [n]
            slot[refs[0][0]] = offset
        elif refs:
            prod = 1
            for i, (_, pre, size) in sorted(refs, key=lambda r: r[1][1] or 1):
                if pre is None or size is None:
                    raise HloParseError(f"axis {axis} is grouped both whole and in parts")
                if pre != prod:
                    dims.append(pre // prod)
                    prod = pre
                slot[i] = offset + len(dims)
                dims.append(size)
                prod *= size
            if prod != n:
                dims.append(n // prod)
        else:
            dims = [n]
        if math.prod(dims) != n:
            raise HloParseError(f"sub-axes {refs} do not divide mesh axis {axis} of size {n}")
        factors.append(dims)
        offset += len(dims)
    flat = [d for dims in factors for d in dims]
    keep = [slot[i] for i in range(len(grouped))]
    rest = [i for i in range(len(flat)) if i not in keep]
    group_size = math.prod(flat[i] for i in keep)
    a = devices.reshape(flat).transpose(rest + keep).reshape(-1, group_size)
    return tuple(tuple(int(d) for d in row) for row in a)
