"""Programs for the differential fuzzer (`fuzz.py`): data, the op table, the generator.

A program is data (`Program`: inputs, constants, a list of `Step` records, a scalar loss), so it
prints as readable Python in both its `ap` and its `jnp` form (`source`). Each step applies one
entry of the op table `SPECS`: a Python expression over a namespace `m` (`AP`, or the `JNP`
twins) and operands `a, b, c, d`, with parameters drawn from the operands' shapes. A new op is
one line of the table; ops `adplugin` does not have (yet) are left out at import (`MISSING`).
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

import adplugin as ap
from adplugin.primitives.shape import basic_index

Shape = tuple[int, ...]
MAX_SIZE = 256  # elements per intermediate value
MAX_RANK = 4


# ----------------------------------------------------------------------------------------------
# Namespaces: what `m.name` means in a template, and how it prints
# ----------------------------------------------------------------------------------------------

class Namespace:
    """An array library seen through `m.name`: `module`'s attributes, with `overrides`;
    `labels` are how overridden names print (`jax.nn.sigmoid` for jnp's `sigmoid`)."""

    def __init__(self, title: str, module: Any, overrides: dict[str, Any],
                 labels: dict[str, str]):
        self.title, self.module = title, module
        self.overrides, self.labels = overrides, labels

    def __getattr__(self, name: str) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        return getattr(self.module, name)

    def has(self, name: str) -> bool:
        return name in self.overrides or hasattr(self.module, name)

    def label(self, name: str) -> str:
        return self.labels.get(name, f"{self.title}.{name}")

    def replaced(self, **overrides: Any) -> Namespace:
        """This namespace with some ops replaced (a planted bug, in the fuzzer's own tests)."""
        return Namespace(self.title, self.module, {**self.overrides, **overrides},
                         {**self.labels, **{k: f"planted_{k}" for k in overrides}})


def ap_getitem(x: Any, key: Any) -> Any:
    """x[key] with adplugin's primitives: `basic_index` on JAX and NumPy values (whose own
    operator is jnp's), the value's `__getitem__` on adplugin's (graph, eager, deferred)."""
    return basic_index(x, key) if isinstance(x, (jax.Array, np.ndarray)) else x[key]


AP = Namespace("ap", ap, {"getitem": ap_getitem}, {"getitem": "ap_getitem"})
_TWINS: dict[str, tuple[Any, str]] = {  # jnp twins of ap ops named differently
    "sigmoid": (jax.nn.sigmoid, "jax.nn.sigmoid"),
    "relu": (jax.nn.relu, "jax.nn.relu"),
    "softmax": (jax.nn.softmax, "jax.nn.softmax"),
    "log_softmax": (jax.nn.log_softmax, "jax.nn.log_softmax"),
    "one_hot": (jax.nn.one_hot, "jax.nn.one_hot"),
    "logsumexp": (jsp.logsumexp, "jax.scipy.special.logsumexp"),
    "erf": (jsp.erf, "jax.scipy.special.erf"),
    "stop_gradient": (jax.lax.stop_gradient, "jax.lax.stop_gradient"),
    "getitem": (lambda x, key: x[key], "operator.getitem"),
}
JNP = Namespace("jnp", jnp, {k: f for k, (f, _) in _TWINS.items()},
                {k: label for k, (_, label) in _TWINS.items()})


# ----------------------------------------------------------------------------------------------
# Random choices: one interface over `random.Random` (CLI) and hypothesis (tests)
# ----------------------------------------------------------------------------------------------

class Draw(Protocol):
    def int(self, lo: int, hi: int) -> int: ...  # lo <= n <= hi


class RandomDraw:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisDraw:
    def __init__(self, draw: Callable[[Any], Any]):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def int(self, lo: int, hi: int) -> int:
        return int(self.draw(self.st.integers(lo, hi)))


def choice(d: Draw, items: Sequence[Any]) -> Any:
    return items[d.int(0, len(items) - 1)]


def chance(d: Draw, p: float) -> bool:
    return d.int(0, 99) >= 100 - round(100 * p)  # shrinks (to 0) towards False


# ----------------------------------------------------------------------------------------------
# Programs as data
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    out: str
    op: str                               # a key of SPECS
    args: tuple[str, ...]                 # value names: inputs x*, constants k*, steps v*
    params: tuple[tuple[str, str], ...]   # template parameter -> Python source

    @property
    def expr(self) -> str:
        return SPECS[self.op].template.format(**dict(self.params))


@dataclass(frozen=True)
class Program:
    dtype: str                            # float32 or float64 (run under jax.enable_x64)
    seed: int                             # input, constant and tangent values come from it
    inputs: tuple[tuple[str, Shape], ...]
    consts: tuple[tuple[str, Shape], ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]              # loss = sum of sum(o) (the last o times weight)
    weight: str | None = None
    tape_mode: str = "variables"          # variables | constants | arrays (watched)
    graph_mode: str = "static"            # static | deferred (placeholders with None dims)

    @property
    def lowered_precision(self) -> bool:
        """Whether a step rounds to float32 (then float32 tolerances apply)."""
        return self.dtype == "float32" or any(SPECS[s.op].to_f32 for s in self.steps)


def arg(seed: int, name: str, shape: Shape, dtype: str) -> np.ndarray:
    """Input `name` (x0, x1, ...) of the program with this seed: standard normal values."""
    rng = np.random.default_rng((seed, 0, int(name[1:])))
    return rng.standard_normal(shape).astype(dtype)


def const(seed: int, name: str, shape: Shape, dtype: str) -> np.ndarray:
    """Constant `name` (k0, k1, ...) of the program with this seed: normal, scale 0.5."""
    rng = np.random.default_rng((seed, 1, int(name[1:])))
    return (rng.standard_normal(shape) * 0.5).astype(dtype)


def input_values(p: Program) -> list[np.ndarray]:
    return [arg(p.seed, n, s, p.dtype) for n, s in p.inputs]


def const_values(p: Program) -> dict[str, np.ndarray]:
    return {n: const(p.seed, n, s, p.dtype) for n, s in p.consts}


@functools.lru_cache(maxsize=8192)
def _compiled(expr: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = eval(f"lambda m, a=None, b=None, c=None, d=None: {expr}",
                                  {"np": np})
    return fn


def loss(p: Program, m: Any, inputs: Sequence[Any]) -> Any:
    """The program's scalar loss, computed with namespace `m` (AP, JNP or a planted one)."""
    env: dict[str, Any] = dict(zip((n for n, _ in p.inputs), inputs))
    env.update(const_values(p))
    for s in p.steps:
        env[s.out] = _compiled(s.expr)(m, *(env[a] for a in s.args))
    total = None
    for o in p.outputs:
        out = env[o]
        if o == p.outputs[-1] and p.weight is not None:
            out = m.multiply(out, env[p.weight])
        total = m.sum(out) if total is None else m.add(total, m.sum(out))
    return total


def source(p: Program, m: Namespace) -> str:
    """The program as Python, with `m`'s names (`ap.sin` or `jnp.sin`)."""
    args = ", ".join(n for n, _ in p.inputs)
    types = ", ".join(f"{n}: {p.dtype}{list(s)}" for n, s in p.inputs)
    lines = [f"def loss_{m.title}({args}):  # {types}; seed {p.seed}"]
    lines += [f"    {n} = const({p.seed}, {n!r}, {s}, {p.dtype!r})" for n, s in p.consts]
    for step in p.steps:
        expr = re.sub(r"\bm\.(\w+)", lambda g: m.label(g.group(1)), step.expr)
        expr = re.sub(r"\b([abcd])\b", functools.partial(_operand, step.args), expr)
        lines.append(f"    {step.out} = {expr}")
    sums = [f"{m.label('sum')}({o})" for o in p.outputs]
    if p.weight is not None:
        sums[-1] = f"{m.label('sum')}({m.label('multiply')}({p.outputs[-1]}, {p.weight}))"
    total = sums[0]
    for term in sums[1:]:
        total = f"{m.label('add')}({total}, {term})"
    lines.append(f"    return {total}")
    return "\n".join(lines)


def _operand(args: tuple[str, ...], g: re.Match[str]) -> str:
    i = "abcd".index(g.group(1))
    return args[i] if i < len(args) else g.group(1)


# ----------------------------------------------------------------------------------------------
# The op table
# ----------------------------------------------------------------------------------------------

class Builder:
    """What a spec's `build` sees while a program is drawn: the values so far and their shapes."""

    def __init__(self, d: Draw, dtype: str, shapes: dict[str, Shape]):
        self.d, self.dtype, self.shapes = d, dtype, shapes
        self.consts: list[tuple[str, Shape]] = []
        self.n_consts = 0

    def values(self) -> list[str]:
        return [n for n in self.shapes if n[0] != "k"]

    def pick(self, ok: Callable[[Shape], bool] = lambda s: True) -> str | None:
        """A value (input or step output, most often the latest) whose shape is `ok`."""
        names = [n for n in self.values() if ok(self.shapes[n])]
        if not names:
            return None
        latest = self.values()[-1]
        if latest in names and chance(self.d, 0.5):
            return latest
        return str(choice(self.d, names))

    def const(self, shape: Shape) -> str:
        name = f"k{self.n_consts}"
        self.n_consts += 1
        self.consts.append((name, shape))
        return name

    def partner(self, a: str) -> str:
        """A second operand broadcasting with `a`: `a` itself, a constant or another value."""
        s = self.shapes[a]
        r = self.d.int(0, 99)
        if r < 15:
            return a
        if r < 40:
            return self.const(broadcastable_shape(self.d, s))
        other = self.pick(lambda t: broadcasts(s, t))
        return other if other is not None else a

    def axis(self, rank: int, none: bool = True) -> str:
        if rank == 0 or (none and chance(self.d, 0.2)):
            return "None" if none or rank == 0 else "0"
        i = self.d.int(0, rank - 1)
        return repr(i - rank if chance(self.d, 0.3) else i)

    def axes(self, rank: int) -> str:
        """None, an axis, or a tuple of distinct axes (some negative)."""
        if rank == 0 or chance(self.d, 0.25):
            return "None"
        if chance(self.d, 0.5):
            return self.axis(rank, none=False)
        picked = sorted({self.d.int(0, rank - 1) for _ in range(self.d.int(1, rank))})
        return repr(tuple(i - rank if chance(self.d, 0.3) else i for i in picked))


def broadcasts(s: Shape, t: Shape) -> bool:
    try:
        np.broadcast_shapes(s, t)
        return True
    except ValueError:
        return False


def broadcastable_shape(d: Draw, s: Shape) -> Shape:
    """A shape broadcasting with `s`: a suffix of it with some dims set to 1."""
    suffix = s[d.int(0, len(s)):]
    return tuple(1 if chance(d, 0.3) else n for n in suffix)


Built = tuple[list[str], dict[str, str]] | None
Build = Callable[[Builder], Built]


def unary(b: Builder) -> Built:
    a = b.pick()
    return None if a is None else ([a], {})


def binary(b: Builder) -> Built:
    a = b.pick()
    return None if a is None else ([a, b.partner(a)], {})


def four(b: Builder) -> Built:  # where(cmp(a, b), c, d), all broadcasting together
    a = b.pick()
    if a is None:
        return None
    return [a, b.partner(a), b.partner(a), b.partner(a)], {"cmp": choice(b.d, _COMPARISONS)}


def scalar(*values: str) -> Build:
    def build(b: Builder) -> Built:
        a = b.pick()
        return None if a is None else ([a], {"s": choice(b.d, values)})
    return build


def also(build: Build, **choices: Sequence[str]) -> Build:
    """`build`, plus a parameter drawn from `choices` for each keyword."""
    def extended(b: Builder) -> Built:
        built = build(b)
        if built is None:
            return None
        return built[0], {**built[1], **{k: choice(b.d, v) for k, v in choices.items()}}
    return extended


def reduction(b: Builder) -> Built:
    a = b.pick()
    if a is None:
        return None
    rank = len(b.shapes[a])
    return [a], {"axis": b.axes(rank), "keepdims": repr(chance(b.d, 0.3))}


def spread(b: Builder) -> Built:
    """var/std: ddof=1 only over 2+ elements, and rarely a single element (zero variance:
    std's gradient is not finite), so most programs stay finite."""
    built = reduction(b)
    if built is None:
        return None
    shape, axis = b.shapes[built[0][0]], eval(built[1]["axis"])
    axes = range(len(shape)) if axis is None else (axis,) if isinstance(axis, int) else axis
    count = math.prod(shape[i] for i in axes)
    if count < 2 and not chance(b.d, 0.05):
        return None
    return built[0], {**built[1], "ddof": "1" if count >= 2 and chance(b.d, 0.4) else "0"}


def one_axis(none: bool) -> Build:
    def build(b: Builder) -> Built:
        a = b.pick(lambda s: len(s) >= (0 if none else 1))
        return None if a is None else ([a], {"axis": b.axis(len(b.shapes[a]), none)})
    return build


def argmax_like(b: Builder) -> Built:
    built = one_axis(True)(b)
    if built is None:
        return None
    return built[0], {**built[1], "dtype": repr(b.dtype), "n": repr(b.d.int(1, 4))}


def any_axes(b: Builder) -> Built:
    a = b.pick()
    return None if a is None else ([a], {"axis": b.axes(len(b.shapes[a]))})


def to_f32(b: Builder) -> Built:
    return None if b.dtype == "float32" else binary(b)


def matmul(b: Builder) -> Built:
    a = b.pick(lambda s: len(s) >= 1)
    if a is None:
        return None
    s, n = b.shapes[a], b.d.int(1, 3)
    r = b.d.int(0, 3)
    if r == 0:  # a value on the right whose contracted dim fits
        other = b.pick(lambda t: len(t) >= 1 and t[-2 if len(t) > 1 else 0] == s[-1])
        if other is not None:
            return [a, other], {}
    if r == 1 and len(s) >= 2:  # a constant on the left
        return [b.const((n, s[-2])), a], {}
    right = (s[-1],) if r == 2 else (*s[:-2][b.d.int(0, max(len(s) - 2, 0)):], s[-1], n)
    return [a, b.const(right)], {}


def reshape(b: Builder) -> Built:
    a = b.pick()
    if a is None:
        return None
    size = math.prod(b.shapes[a])
    shape = factor_shape(b.d, size)
    if size > 0 and shape and chance(b.d, 0.3):
        i = b.d.int(0, len(shape) - 1)
        shape = (*shape[:i], -1, *shape[i + 1:])
    return [a], {"shape": repr(shape)}


def factor_shape(d: Draw, size: int) -> Shape:
    if size == 0:
        return choice(d, [(0,), (2, 0), (0, 3)])
    dims: list[int] = []
    for _ in range(d.int(0 if size == 1 else 1, 3) - 1):
        divisors = [k for k in range(1, size + 1) if size % k == 0]
        k = choice(d, divisors)
        dims.append(k)
        size //= k
    return (*dims, size) if dims or size != 1 or chance(d, 0.5) else ()


def transpose(b: Builder) -> Built:
    a = b.pick()
    if a is None:
        return None
    rest = list(range(len(b.shapes[a])))
    if chance(b.d, 0.2):
        return [a], {"axes": "None"}
    perm = [rest.pop(b.d.int(0, len(rest) - 1)) for _ in range(len(rest))]
    return [a], {"axes": repr(tuple(perm))}


def expand_dims(b: Builder) -> Built:
    a = b.pick(lambda s: len(s) < MAX_RANK)
    if a is None:
        return None
    r = len(b.shapes[a])
    return [a], {"axis": repr(b.d.int(-(r + 1), r))}


def squeeze(b: Builder) -> Built:
    a = b.pick(lambda s: 1 in s)
    if a is None:
        return None
    s = b.shapes[a]
    ones = [i - len(s) if chance(b.d, 0.3) else i for i, n in enumerate(s) if n == 1]
    axis = choice(b.d, ["None", repr(ones[0]), repr(tuple(ones))])
    return [a], {"axis": axis}


def broadcast_to(b: Builder) -> Built:
    a = b.pick()
    if a is None:
        return None
    lead = tuple(b.d.int(1, 3) for _ in range(b.d.int(0, 1)))
    shape = (*lead, *(b.d.int(1, 3) if n == 1 else n for n in b.shapes[a]))
    return [a], {"shape": repr(shape)}


def joined(stack: bool) -> Build:
    """concatenate([a, b(, a)], axis) or stack: `b` is `a`, a constant or a fitting value."""
    def build(b: Builder) -> Built:
        a = b.pick(lambda s: stack or len(s) >= 1)
        if a is None:
            return None
        s = b.shapes[a]
        axis = b.d.int(-len(s) - stack, len(s) - 1 + stack)
        k = axis % (len(s) + stack)
        def fits(t: Shape) -> bool:  # all dims but the joined axis agree
            return t == s if stack else (
                len(t) == len(s) and t[:k] + t[k + 1:] == s[:k] + s[k + 1:])

        shape = s if stack else (*s[:k], b.d.int(1, 3), *s[k + 1:])
        r = b.d.int(0, 2)
        other = a if r == 0 else b.const(shape) if r == 1 else b.pick(fits) or a
        operands = [a, other] + ([a] if chance(b.d, 0.25) else [])
        names = ", ".join("abc"[: len(operands)])
        return operands, {"operands": f"[{names}]", "axis": repr(axis)}
    return build


def take(b: Builder) -> Built:
    a = b.pick()
    if a is None:
        return None
    s = b.shapes[a]
    axis = "None" if not s or chance(b.d, 0.25) else b.axis(len(s), none=False)
    n = math.prod(s) if axis == "None" else s[int(axis)]
    mode = choice(b.d, ["None", "None", "'clip'", "'wrap'", "'fill'"]) if n else "None"
    lo, hi = (-2 * n, 2 * n - 1) if mode != "None" else (-n, n - 1)
    count = b.d.int(1, 4) if n else 0
    picked = [b.d.int(lo, hi) for _ in range(count)]
    index = (f"np.int32({picked[0]})" if count == 1 and chance(b.d, 0.3)
             else f"np.array({picked}, 'int32')")
    return [a], {"index": index, "axis": axis, "mode": mode}


def getitem(b: Builder) -> Built:
    a = b.pick()
    if a is None:
        return None
    keys: list[str] = []
    for n in b.shapes[a][: b.d.int(0, len(b.shapes[a]))]:
        r = b.d.int(0, 9)
        if n and r < 4:
            keys.append(repr(b.d.int(-n, n - 1)))
        elif r < 8:
            lo, hi = b.d.int(-n - 1, n + 1), b.d.int(-n - 1, n + 1)
            keys.append(f"slice({choice(b.d, ['None', repr(lo)])}, "
                        f"{choice(b.d, ['None', repr(hi)])})")
        else:
            keys.append(":")
        if chance(b.d, 0.1):
            keys.append("None")
    keys = ["slice(None)" if k == ":" else k for k in keys]
    if chance(b.d, 0.15):  # after the keys: each was drawn for the axis it indexes
        keys.append("...")
    key = keys[0] if len(keys) == 1 else f"({', '.join(keys)}{',' if not keys else ''})"
    return [a], {"key": key}


_COMPARISONS = ["less", "less_equal", "greater", "greater_equal", "equal", "not_equal"]
POS = "m.add(m.square({x}), 0.5)"  # a smooth positive guard


@dataclass(frozen=True)
class Spec:
    template: str            # Python over m (namespace), a..d (operands), {params}
    build: Build
    to_f32: bool = False     # rounds to float32 on purpose

    def names(self) -> set[str]:
        return set(re.findall(r"\bm\.(\w+)", self.template))


_ALL: dict[str, Spec] = {
    # elementwise, with domain guards written in ap/jnp ops too
    "negative": Spec("m.negative(a)", unary), "square": Spec("m.square(a)", unary),
    "sin": Spec("m.sin(a)", unary), "cos": Spec("m.cos(a)", unary),
    "tanh": Spec("m.tanh(a)", unary), "sigmoid": Spec("m.sigmoid(a)", unary),
    "abs": Spec("m.abs(a)", unary), "sign": Spec("m.sign(a)", unary),
    "exp": Spec("m.exp(m.tanh(a))", unary), "expm1": Spec("m.expm1(m.tanh(a))", unary),
    "log": Spec("m.log(m.add(m.abs(a), 0.5))", unary),
    "log1p": Spec("m.log1p(m.square(a))", unary),
    "sqrt": Spec("m.sqrt(" + POS.format(x="a") + ")", unary),
    "tan": Spec("m.tan(m.tanh(a))", unary), "relu": Spec("m.relu(a)", unary),
    "erf": Spec("m.erf(a)", unary), "clip": Spec("m.clip(a, -0.5, {s})", scalar("0.25", "1.0")),
    "leaky": Spec("m.where(m.greater(a, 0.0), a, m.multiply(a, 0.1))", unary),
    "stop_gradient": Spec("m.multiply(a, m.stop_gradient(a))", unary),
    "isfinite": Spec("m.where(m.isfinite(a), a, 0.0)", unary),
    # binary, broadcasting (b may be a itself: ties of maximum/minimum)
    "add": Spec("m.add(a, b)", binary), "subtract": Spec("m.subtract(a, b)", binary),
    "multiply": Spec("m.multiply(a, b)", binary),
    "divide": Spec("m.divide(a, " + POS.format(x="b") + ")", binary),
    "maximum": Spec("m.maximum(a, b)", binary), "minimum": Spec("m.minimum(a, b)", binary),
    "power": Spec("m.power(" + POS.format(x="a") + ", m.tanh(b))", binary),
    "power_k": Spec("m.power(" + POS.format(x="a") + ", {s})", scalar("2", "3", "-1.5", "0.5")),
    "scale": Spec("m.multiply(a, {s})", scalar("2.5", "-0.5", "3")),
    "where": Spec("m.where(m.{cmp}(a, b), c, d)", four),
    "where_k": Spec("m.where(m.greater(a, {s}), a, m.sin(a))", scalar("0.0", "0.5")),
    "to_f32": Spec("m.add(m.astype(a, 'float32'), b)", to_f32, to_f32=True),
    "to_int": Spec("m.add(m.astype(m.astype(m.multiply(a, 3.0), 'int32'), {dtype}), a)",
                   lambda b: also(unary, dtype=(repr(b.dtype),))(b)),
    "int_power": Spec("m.power(a, {s})", scalar("2", "3")),
    # Python operators (on graph tensors, eager tensors and variables)
    "op_add": Spec("a + b", binary), "op_sub": Spec("{s} - a", scalar("1.0", "2")),
    "op_mul": Spec("a * b", binary), "op_div": Spec("a / {s}", scalar("4.0", "-2")),
    "op_neg": Spec("-a", unary), "op_pow": Spec("(a * a + 0.5) ** {s}", scalar("2", "0.5")),
    "op_matmul": Spec("a @ b", matmul), "op_index": Spec("a[{key}]", getitem),
    "op_T": Spec("a.T", unary), "op_cube": Spec("a ** 3", unary),
    "op_sum": Spec("a.sum({axis})", one_axis(True)),
    # reductions
    "sum": Spec("m.sum(a, axis={axis}, keepdims={keepdims})", reduction),
    "mean": Spec("m.mean(a, axis={axis}, keepdims={keepdims})", reduction),
    "max": Spec("m.max(a, axis={axis}, keepdims={keepdims})", reduction),
    "min": Spec("m.min(a, axis={axis}, keepdims={keepdims})", reduction),
    "prod": Spec("m.prod(a, axis={axis}, keepdims={keepdims})", reduction),
    "var": Spec("m.var(a, axis={axis}, ddof={ddof}, keepdims={keepdims})", spread),
    "std": Spec("m.std(a, axis={axis}, ddof={ddof}, keepdims={keepdims})", spread),
    "logsumexp": Spec("m.logsumexp(a, axis={axis}, keepdims={keepdims})", reduction),
    "argmax": Spec("m.astype(m.argmax(a, axis={axis}, keepdims={keepdims}), {dtype})",
                   also(argmax_like, keepdims=("False", "True"))),
    "argmin": Spec("m.astype(m.argmin(a, axis={axis}), {dtype})", argmax_like),
    "one_hot": Spec("m.one_hot(m.argmin(a, axis={axis}), {n}, axis={at})",
                    also(argmax_like, at=("-1", "-1", "0"))),
    "softmax": Spec("m.softmax(a, axis={axis})", any_axes),
    "log_softmax": Spec("m.log_softmax(a, axis={axis})", one_axis(False)),
    "cumsum": Spec("m.cumsum(a, axis={axis})", one_axis(True)),
    # linear algebra, shapes, indexing
    "matmul": Spec("m.matmul(a, b)", matmul), "dot": Spec("m.dot(a, b)", matmul),
    "reshape": Spec("m.reshape(a, {shape})", reshape),
    "transpose": Spec("m.transpose(a, {axes})", transpose),
    "expand_dims": Spec("m.expand_dims(a, {axis})", expand_dims),
    "squeeze": Spec("m.squeeze(a, {axis})", squeeze),
    "broadcast_to": Spec("m.broadcast_to(a, {shape})", broadcast_to),
    "concatenate": Spec("m.concatenate({operands}, axis={axis})", joined(False)),
    "stack": Spec("m.stack({operands}, axis={axis})", joined(True)),
    "take": Spec("m.take(a, {index}, axis={axis}, mode={mode})", take),
    "getitem": Spec("m.getitem(a, {key})", getitem),
}


def available(table: dict[str, Spec], m: Namespace = AP) -> dict[str, Spec]:
    """The specs whose `m.*` names all exist in `m` (ops not yet in adplugin are left out)."""
    return {k: s for k, s in table.items() if all(m.has(n) for n in s.names())}


SPECS: dict[str, Spec] = dict(_ALL)  # every spec, for Step.expr (programs name their op)
ACTIVE: dict[str, Spec] = available(_ALL)  # the ones programs are drawn from
MISSING: list[str] = sorted(set(_ALL) - set(ACTIVE))


# ----------------------------------------------------------------------------------------------
# Drawing a program
# ----------------------------------------------------------------------------------------------

def draw_shape(d: Draw, base: Shape) -> Shape:
    if base and chance(d, 0.7):  # related to the base: broadcasting is likely
        return broadcastable_shape(d, base)
    return tuple(d.int(1, 4) for _ in range(d.int(0, 3)))


def generate(d: Draw, seed: int, min_steps: int = 5, max_steps: int = 40,
             dtypes: Sequence[str] = ("float32", "float64"),
             ops: dict[str, Spec] | None = None) -> Program:
    """Draw a program: 1-3 inputs of related shapes, then `min_steps..max_steps` steps, each
    an op of `ops` (ACTIVE by default) whose jnp twin accepts the operands' shapes."""
    table = ACTIVE if ops is None else ops
    names = sorted(table)
    dtype = choice(d, list(dtypes))
    base = tuple(d.int(1, 4) for _ in range(d.int(0, 3)))
    if base and chance(d, 0.08):  # a zero-size dimension now and then
        i = d.int(0, len(base) - 1)
        base = (*base[:i], 0, *base[i + 1:])
    inputs = tuple((f"x{i}", draw_shape(d, base) if i else base) for i in range(d.int(1, 3)))
    b = Builder(d, dtype, dict(inputs))
    steps: list[Step] = []
    with jax.enable_x64(dtype == "float64"):
        for i in range(d.int(min_steps, max_steps)):
            for _ in range(20):  # retry ops that do not apply to the shapes at hand
                n_consts = len(b.consts)
                op = choice(d, names)
                built = table[op].build(b)
                if built is not None:
                    step = Step(f"v{i}", op, tuple(built[0]), tuple(sorted(built[1].items())))
                    shape = _out_shape(step, b)
                    if shape is not None:
                        steps.append(step)
                        b.shapes[step.out] = shape
                        break
                del b.consts[n_consts:]
    used = {a for s in steps for a in s.args}
    outputs = tuple(s.out for s in steps if s.out not in used)  # the last step's is among them
    weight = b.const(b.shapes[outputs[-1]]) if chance(d, 0.4) else None
    mode = choice(d, ["variables", "constants", "arrays"])
    return Program(dtype, seed, inputs, tuple(b.consts), tuple(steps), outputs, weight, mode,
                   choice(d, ["static", "static", "deferred"]))


def _out_shape(step: Step, b: Builder) -> Shape | None:
    """The step's output shape from its jnp twin, or None when jnp rejects it (or it is too
    big, not floating point)."""
    specs = {**b.shapes, **dict(b.consts)}
    args = [jax.ShapeDtypeStruct(specs[a], b.dtype) for a in step.args]
    try:
        out = jax.eval_shape(lambda *xs: _compiled(step.expr)(JNP, *xs), *args)
    except Exception:
        return None
    if (not hasattr(out, "shape") or len(out.shape) > MAX_RANK
            or math.prod(out.shape) > MAX_SIZE or not jnp.issubdtype(out.dtype, jnp.floating)):
        return None
    return tuple(out.shape)


def prune(p: Program) -> Program:
    """Drop steps, inputs and constants the loss does not use (at least one input stays)."""
    live = set(p.outputs) | ({p.weight} if p.weight else set())
    steps = []
    for s in reversed(p.steps):
        if s.out in live:
            steps.append(s)
            live.update(s.args)
    inputs = tuple(i for i in p.inputs if i[0] in live) or p.inputs[:1]
    consts = tuple(c for c in p.consts if c[0] in live)
    return replace(p, inputs=inputs, consts=consts, steps=tuple(reversed(steps)))


def programs(min_steps: int = 5, max_steps: int = 40, ops: dict[str, Spec] | None = None,
             dtypes: Sequence[str] = ("float32", "float64")) -> Any:
    """A hypothesis strategy of programs (every choice a hypothesis draw, so it shrinks)."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw: Callable[[Any], Any]) -> Program:
        seed = int(draw(st.integers(0, 2**31 - 1)))
        return generate(HypothesisDraw(draw), seed, min_steps, max_steps, dtypes, ops)

    return strategy()
