"""`ap.Variable`: a mutable holder of a JAX array, usable wherever an array is.

Variables (and optimizer state) are `Cell`s: mutable state whose reads and writes go through the
dispatch context. Outside any scope a read is the stored array; inside a tape it is recorded;
inside a graph being built it is a read node fed at run time; inside `ap.function`'s trace it is
the traced value the compiled program takes as input, and writes become its outputs.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import message, shape_error
from adplugin._operator_types import ConcreteValueMethods, OperatorMethods


class Cell:
    """Mutable state that `ap.function` lifts into its compiled program's inputs and outputs.

    `_stored` is the committed value (a pytree of arrays); `_version` counts writes, so a
    recording knows a read after an assignment is a new value.
    """

    __slots__ = ("_stored", "_version", "__weakref__")

    def __init__(self, value: Any):
        self._stored = value
        self._version = 0
        scope = _context.current()
        if scope is not None and scope.frame is not None and _traced(value):
            scope.frame.create(self, value)  # state made by a compiled function's trace

    def _read(self) -> Any:
        """The value in this context: the traced one inside `ap.function`, else the stored."""
        scope = _context.current()
        if scope is not None and scope.frame is not None:
            return scope.frame.read(self)
        return self._stored

    def _write(self, value: Any) -> None:
        scope = _context.current()
        if scope is not None and scope.frame is not None:
            if scope.jax_trace is not jx.current_trace():
                raise RuntimeError(_lost_update(type(self).__name__, "inside a JAX "
                                                "transformation within an `ap.function`"))
            scope.frame.write(self, value)
            self._version += 1  # a recording inside the function reads a new version
            return
        if _traced(value) or not jx.at_top_level():
            raise RuntimeError(_lost_update(type(self).__name__, "inside a JAX transformation "
                                            "(jax.jit, grad, vmap)"))
        self._stored = value
        self._version += 1


def _traced(value: Any) -> bool:
    return any(jx.is_tracer(x) for x in jax.tree.leaves(value))


def _lost_update(kind: str, where: str) -> str:
    """A write JAX would apply once, while tracing, and never again: refused."""
    return message(
        f"{kind}.assign", f"adplugin state was assigned {where}: the update would happen once, "
        "while tracing, and be lost on every later call", "an assignment in traced code",
        "assignments in eager code or in an `@ap.function`", "decorate the step with "
        "@ap.function (which compiles variable updates into the program) instead of jax.jit")


class Variable(Cell, OperatorMethods, ConcreteValueMethods):
    """A named, mutable array (TensorFlow's `tf.Variable`).

    Reading it inside a `GradientTape` records the read (and the tape watches it when it is
    trainable); `assign`, `assign_add` and `assign_sub` replace its value, and later reads in
    the same tape see (and differentiate at) the new value. JAX functions accept it directly
    (`jnp.sum(v)`), as do all `ap.*` ops and Python operators.
    """

    __slots__ = ("trainable", "name", "_uid", "_device", "_sharding")
    _ids = itertools.count()
    __array_priority__ = 1000

    def __init__(self, initial_value: Any, trainable: bool = True, name: str | None = None,
                 dtype: Any = None, device: Any = None, sharding: Any = None):
        scope = _context.current()
        if scope is not None and scope.frame is not None:
            raise RuntimeError(message(
                "Variable", "a variable was created inside an `ap.function` while it traces",
                f"Variable({name or ''}) created in the traced code", "variables created "
                "outside the function", "create the variable once, outside, and pass it in "
                "or close over it"))
        if callable(initial_value):
            initial_value = initial_value()
        initial_value = getattr(initial_value, "materialized", initial_value)
        if isinstance(initial_value, Variable):
            initial_value = initial_value._stored
        value = jnp.asarray(initial_value, dtype=dtype)
        value = jnp.asarray(value, dtype=value.dtype)  # strongly typed, as every assign gives
        if value.dtype.kind not in "biuf" and not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(message("Variable", "unsupported dtype", value.dtype.name,
                                    "a boolean, integer or floating-point value",
                                    "pass a numeric array"))
        # the device it lives on: `device=`, or the enclosing ap.device scope's (placement)
        from adplugin.placement.requests import variable_home

        self._device, value = variable_home(device, scope, value)
        self._sharding = None
        if sharding is not None:  # split over a mesh: `sharding=P(...)` on the mesh in scope
            from adplugin.sharding.mesh import MeshError, named_sharding

            if device is not None:
                raise MeshError(message(
                    "Variable", "both a device and a sharding were given", f"device={device!r}"
                    f", sharding={sharding!r}", "one of them", "give the sharding alone (its "
                    "mesh says which devices hold the value)"))
            self._sharding = named_sharding("Variable", sharding, value.shape)
            value = jax.device_put(value, self._sharding)
        super().__init__(value)
        self.trainable = bool(trainable)
        self._uid = next(Variable._ids)
        self.name = name or f"Variable{self._uid}"

    # --- value ----------------------------------------------------------------------------------

    @property
    def value(self) -> jax.Array:
        """The plain value (never recorded by a tape; the traced value inside ap.function)."""
        return self._read()  # type: ignore[no-any-return]

    def read_value(self) -> Any:
        """The value as a read: recorded by a tape that watches the variable, a read node in a
        graph being built, the traced value inside `ap.function` (TensorFlow's read_value)."""
        from adplugin.eager.recording import read_variable

        return read_variable(self)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._stored.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._stored.dtype)

    @property
    def weak_type(self) -> bool:
        return False

    @property
    def ndim(self) -> int:
        return len(self._stored.shape)

    @property
    def size(self) -> int:
        return int(self._stored.size)

    @property
    def device(self) -> Any:
        """The `jax.Device` the value lives on (its requested one: `device=` or a scope)."""
        from adplugin.placement.requests import variable_device

        return variable_device(self)

    @property
    def sharding(self) -> Any:
        """The `NamedSharding` given with `sharding=` (the value keeps it through every
        assignment, in eager code, tapes and `ap.function`), else None."""
        return self._sharding

    def _write(self, value: Any) -> None:
        if self._device is not None and not _traced(value) and jx.at_top_level():
            from adplugin.placement.requests import put, sharding_of

            value = put(value, sharding_of(self._device))  # it stays on its device
        elif self._sharding is not None and not _traced(value) and jx.at_top_level() and \
                getattr(value, "sharding", None) != self._sharding:
            value = jax.device_put(value, self._sharding)  # it stays split as it was
        super()._write(value)

    # --- updates --------------------------------------------------------------------------------

    def assign(self, value: Any) -> Any:
        """Replace the value. Inside a graph being built this returns the assignment as a graph
        op (applied when `Graph.run` fetches it), as in TensorFlow 1.

        The value keeps the variable's dtype: one that NumPy casts "same_kind" is converted
        (an int or a float64 into a float32 variable); one that would lose its kind (a float
        into an integer variable, a complex into a float one) is refused, as TensorFlow does."""
        check_assignable(self, value)
        scope = _context.effective()
        if scope is not None and scope.graph is not None:
            from adplugin.ir.variables import assign_node

            return assign_node(scope.graph, self, value)
        new = plain_value(value)
        if not jx.is_tracer(new):
            new = jnp.asarray(new, dtype=self.dtype)
        elif np.dtype(new.dtype) != self.dtype:
            new = new.astype(self.dtype)
        if tuple(np.shape(new)) != self.shape:
            raise shape_error(f"Variable({self.name}).assign", "the new value has another shape",
                              list(np.shape(new)), list(self.shape),
                              "assign a value of the variable's shape (or make a new Variable)")
        self._write(new)
        return self

    def assign_add(self, delta: Any) -> Any:
        scope = _context.effective()
        if scope is not None and scope.graph is not None:
            return self.assign(self.read_value() + delta)
        return self.assign(self.value + plain_value(delta))

    def assign_sub(self, delta: Any) -> Any:
        scope = _context.effective()
        if scope is not None and scope.graph is not None:
            return self.assign(self.read_value() - delta)
        return self.assign(self.value - plain_value(delta))

    # --- array protocol -------------------------------------------------------------------------

    def _concrete_value(self) -> jax.Array:
        return self.value

    def __jax_array__(self) -> jax.Array:
        _check_jax_read(self)
        return self.value

    def __repr__(self) -> str:
        return f"<ap.Variable {self.name!r} shape={self.shape} dtype={self.dtype.name}, " \
               f"value={np.asarray(self._stored)!r}>"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:  # identity, so variables can key dicts
        return self is other


def _value_dtype(value: Any) -> np.dtype | None:
    """The dtype an assigned value brings (Python scalars by kind; None when unknown yet)."""
    if type(value) in (bool, int, float, complex):
        return np.dtype(type(value))
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            return np.asarray(value).dtype
        except Exception:
            return None
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def check_assignable(v: Variable, value: Any) -> None:
    """Refuse a value whose dtype would lose its kind in `v` (float -> int, complex -> float):
    a silent truncation otherwise (TensorFlow raises too)."""
    dtype = _value_dtype(value)
    if dtype is None or dtype == v.dtype or np.can_cast(dtype, v.dtype, "same_kind"):
        return
    if type(value) is int and v.dtype.kind in "iu":  # a Python int fits any integer variable
        return
    scalar = type(value) in (bool, int, float, complex)
    raise TypeError(message(
        f"Variable({v.name}).assign", f"a {type(value).__name__ if scalar else dtype.name} "
        f"value would be truncated to the variable's {v.dtype.name}",
        f"{value!r:.40}" if scalar else f"{type(value).__name__} of dtype {dtype.name}",
        f"a value of dtype {v.dtype.name} (or one that casts to it 'same_kind')",
        f"cast explicitly if truncation is meant (ap.astype(value, {v.dtype.name!r}), "
        "np.round first, np.real for a complex value), or make a variable of the value's "
        "dtype"))


def _flatten(v: Variable) -> tuple[tuple[Any], tuple[bool, str]]:
    _check_jax_read(v)
    return (v.value,), (v.trainable, v.name)


# Set by the tape module: raises when a JAX function reads a variable a tape would
# differentiate (filled once at import; nothing mutates it afterwards).
jax_read_guards: list[Any] = []


def _check_jax_read(v: Any) -> None:
    for guard in jax_read_guards:
        guard(v)


def _unflatten(aux: tuple[bool, str], children: Any) -> Any:
    # inside a JAX transformation a variable is a pytree of its value: give the value back
    return children[0]


# A pytree, so JAX functions (jnp.sum(v), jax.jit(f)(v)) take variables directly.
jax.tree_util.register_pytree_node(Variable, _flatten, _unflatten)


def plain_value(value: Any) -> Any:
    """A value as JAX sees it (variables read, eager tensors materialized)."""
    if isinstance(value, Variable):
        return value.value
    return getattr(value, "materialized", value)
