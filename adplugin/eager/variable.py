"""`ap.Variable`: a mutable holder of a JAX array, usable wherever an array is."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin._errors import message, shape_error
from adplugin._operator_types import ConcreteValueMethods, OperatorMethods


class Variable(OperatorMethods, ConcreteValueMethods):
    """A named, mutable array (TensorFlow's `tf.Variable`).

    Reading it inside a `GradientTape` records the read (and the tape watches it when it is
    trainable); `assign`, `assign_add` and `assign_sub` replace its value. JAX functions
    accept it directly (`jnp.sum(v)`), as do all `ap.*` ops and Python operators.
    """

    _ids = itertools.count()
    __array_priority__ = 1000

    def __init__(self, initial_value: Any, trainable: bool = True, name: str | None = None,
                 dtype: Any = None):
        value = jnp.asarray(initial_value, dtype=dtype)
        if value.dtype.kind not in "biuf" and not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(message("Variable", "unsupported dtype", value.dtype.name,
                                    "a boolean, integer or floating-point value",
                                    "pass a numeric array"))
        self._value = value
        self.trainable = bool(trainable)
        self.name = name or f"Variable{next(Variable._ids)}"

    # --- value ----------------------------------------------------------------------------------

    @property
    def value(self) -> jax.Array:
        return self._value

    def read_value(self) -> jax.Array:
        return self._value


    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._value.dtype)

    @property
    def weak_type(self) -> bool:
        return False

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return int(self._value.size)

    # --- updates --------------------------------------------------------------------------------

    def assign(self, value: Any) -> Variable:
        new = jnp.asarray(_concrete(value), dtype=self.dtype)
        if new.shape != self._value.shape:
            raise shape_error(f"Variable({self.name}).assign", "the new value has another shape",
                              list(new.shape), list(self._value.shape),
                              "assign a value of the variable's shape (or make a new Variable)")
        self._value = new
        return self

    def assign_add(self, delta: Any) -> Variable:
        return self.assign(self._value + _concrete(delta))

    def assign_sub(self, delta: Any) -> Variable:
        return self.assign(self._value - _concrete(delta))

    # --- array protocol -------------------------------------------------------------------------

    def _concrete_value(self) -> jax.Array:
        return self._value

    def __jax_array__(self) -> jax.Array:
        _check_jax_read(self)
        return self._value

    def __repr__(self) -> str:
        return f"<ap.Variable {self.name!r} shape={self.shape} dtype={self.dtype.name}, " \
               f"value={np.asarray(self._value)!r}>"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:  # identity, so variables can key dicts
        return self is other


def _flatten(v: Variable) -> tuple[tuple[Any], tuple[bool, str]]:
    _check_jax_read(v)
    return (v._value,), (v.trainable, v.name)


# Set by the tape: raises when a JAX function reads a variable the tape would differentiate.
jax_read_guards: list[Any] = []


def _check_jax_read(v: Any) -> None:
    for guard in jax_read_guards:
        guard(v)


def _unflatten(aux: tuple[bool, str], children: Any) -> Variable:
    # a view of the value (possibly a tracer) inside a JAX transformation
    v = object.__new__(Variable)
    v._value, (v.trainable, v.name) = children[0], aux
    return v


# A pytree, so JAX functions (jnp.sum(v), jax.jit(f)(v)) take variables directly.
jax.tree_util.register_pytree_node(Variable, _flatten, _unflatten)


def _concrete(value: Any) -> Any:
    return value.value if isinstance(value, Variable) else getattr(value, "materialized", value)
