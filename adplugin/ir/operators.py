"""Python operators on symbolic values, each one an `ap.*` op (`2*a*b**2 + 3*a**2*b` works)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adplugin.ir.graph import Tensor
from adplugin.primitives import conversion, elementwise, linalg, logic, reductions, shape

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": elementwise.add, "sub": elementwise.subtract, "mul": elementwise.multiply,
    "truediv": elementwise.divide, "pow": elementwise.power, "matmul": linalg.matmul,
}
# ordering comparisons only: == and != keep identity semantics, so tensors stay hashable
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "lt": logic.less, "le": logic.less_equal, "gt": logic.greater, "ge": logic.greater_equal,
}


def _forward(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda self, other: fn(self, other)


def _reflected(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda self, other: fn(other, self)


_METHODS: dict[str, Any] = {
    **{f"__{n}__": _forward(f) for n, f in _BINARY.items()},
    **{f"__r{n}__": _reflected(f) for n, f in _BINARY.items()},
    **{f"__{n}__": _forward(f) for n, f in _COMPARISONS.items()},
    "__neg__": lambda self: elementwise.negative(self),
    "__pos__": lambda self: self,
    "__abs__": lambda self: elementwise.abs(self),
    "__getitem__": lambda self, key: shape.basic_index(self, key),
    "T": property(lambda self: shape.transpose(self)),
    "reshape": lambda self, *s: shape.reshape(self, s[0] if len(s) == 1 else s),
    "astype": lambda self, dtype: conversion.astype(self, dtype),
    "sum": lambda self, axis=None, keepdims=False: reductions.sum(self, axis, keepdims),
    "mean": lambda self, axis=None, keepdims=False: reductions.mean(self, axis, keepdims),
}


def install_operators(cls: type) -> None:
    """Give `cls` NumPy-style operators and methods that call the `ap.*` ops."""
    for name, method in _METHODS.items():
        setattr(cls, name, method)


install_operators(Tensor)
