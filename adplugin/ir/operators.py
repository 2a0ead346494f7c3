"""Python operators on graph tensors, each one an `ap.*` op (so `2*a*b**2 + 3*a**2*b` works)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adplugin.ir.graph import Tensor
from adplugin.primitives import conversion, elementwise, linalg, logic, reductions, shape


def _binary(fn: Callable[[Any, Any], Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    return (lambda self, other: fn(self, other)), (lambda self, other: fn(other, self))


_BINARY = {
    "add": elementwise.add, "sub": elementwise.subtract, "mul": elementwise.multiply,
    "truediv": elementwise.divide, "pow": elementwise.power, "matmul": linalg.matmul,
}
for _name, _fn in _BINARY.items():
    _forward, _reflected = _binary(_fn)
    setattr(Tensor, f"__{_name}__", _forward)
    setattr(Tensor, f"__r{_name}__", _reflected)

Tensor.__neg__ = lambda self: elementwise.negative(self)  # type: ignore[attr-defined]
Tensor.__pos__ = lambda self: self  # type: ignore[attr-defined]
Tensor.__abs__ = lambda self: elementwise.abs(self)  # type: ignore[attr-defined]
# ordering comparisons only: == and != keep identity semantics, so tensors stay hashable
Tensor.__lt__ = lambda self, o: logic.less(self, o)  # type: ignore[attr-defined,assignment]
Tensor.__le__ = lambda self, o: logic.less_equal(self, o)  # type: ignore[attr-defined,assignment]
Tensor.__gt__ = lambda self, o: logic.greater(self, o)  # type: ignore[attr-defined,assignment]
Tensor.__ge__ = lambda self, o: logic.greater_equal(self, o)  # type: ignore[attr-defined,assignment]

Tensor.T = property(lambda self: shape.transpose(self))  # type: ignore[attr-defined]
Tensor.reshape = lambda self, *s: shape.reshape(  # type: ignore[attr-defined]
    self, s[0] if len(s) == 1 else s)
Tensor.astype = lambda self, dtype: conversion.astype(self, dtype)  # type: ignore[attr-defined]
Tensor.sum = lambda self, axis=None, keepdims=False: reductions.sum(  # type: ignore[attr-defined]
    self, axis, keepdims)
Tensor.mean = lambda self, axis=None, keepdims=False: reductions.mean(  # type: ignore[attr-defined]
    self, axis, keepdims)
