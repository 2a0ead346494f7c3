"""Error messages that name the op, what was given, what was expected and how to fix it."""

from __future__ import annotations


class AdpluginError(Exception):
    """Base class of adplugin's own errors."""


class OpShapeError(AdpluginError, ValueError):
    """An op got operands whose shapes do not fit together."""


class OpTypeError(AdpluginError, TypeError):
    """An op got an operand of the wrong dtype or kind."""


class AxisError(AdpluginError, ValueError):
    """An op got an axis that is out of range or repeated."""


class DerivativeError(AdpluginError, TypeError):
    """A derivative was asked for where none exists (integer input, non-differentiable op)."""


class ShardingRuleError(AdpluginError, ValueError):
    """An op cannot derive its output sharding from its inputs' shardings."""


def message(op: str, problem: str, given: object, expected: object, fix: str) -> str:
    return f"ap.{op}: {problem}. Given: {given}. Expected: {expected}. Fix: {fix}"


def shape_error(op: str, problem: str, given: object, expected: object, fix: str) -> OpShapeError:
    return OpShapeError(message(op, problem, given, expected, fix))


def type_error(op: str, problem: str, given: object, expected: object, fix: str) -> OpTypeError:
    return OpTypeError(message(op, problem, given, expected, fix))


def axis_error(op: str, axis: object, ndim: int) -> AxisError:
    return AxisError(message(
        op, "axis out of range or repeated", f"axis={axis} for an array of rank {ndim}",
        f"distinct axes in [-{ndim}, {ndim})" if ndim else "no axis (the array is a scalar)",
        "pass axes that exist in the operand (negative axes count from the end)"))


class ExportError(AdpluginError, ValueError):
    """A serialized export is corrupt, truncated, of another format version, or not one."""
