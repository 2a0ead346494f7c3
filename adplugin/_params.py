"""Exact cache keys for primitive params.

Python's equality merges values an op tells apart: `True == 1 == 1.0`, `0.0 == -0.0`, and
`np.float32(0.5) == 0.5` all hash alike, so a cache keyed by `params.items()` hands an op
built for one the result built for the other (a `clip` at -0.0 for one at 0.0, an int exponent
for a float one). Every cache and merge of ops keys params with `params_key`: equal keys mean
identical params, type and sign included (NaN keys equal NaN: it is one param value).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SMALL_ARRAY = 64  # arrays up to this many bytes key by their bytes, larger by a digest


def params_key(params: dict[str, Any]) -> tuple[Any, ...]:
    """A hashable key equal for two params dicts exactly when they are identical; raises
    TypeError for a value that cannot be keyed."""
    return tuple([(k, exact(v)) for k, v in params.items()])


def exact(value: Any) -> Any:
    """A hashable form of `value` that tells apart what `==` merges (see the module)."""
    t = type(value)
    if t is str or t is int or value is None:
        return value  # ints stay themselves: bools and floats below are tagged
    if t is bool:
        return ("bool", value)
    if t is float:
        return ("float", value.hex())  # -0.0 and 0.0 differ; every NaN is one key
    if t is tuple or t is list:
        return tuple([exact(v) for v in value])
    if t is dict:
        return ("dict", tuple(sorted((k, exact(v)) for k, v in value.items())))
    if isinstance(value, np.ndarray):
        return array_key(value, weak=False)
    if isinstance(value, np.generic):
        return ("scalar", value.dtype.str, value.tobytes())
    if isinstance(value, np.dtype):
        return ("dtype", value.str)
    hash(value)  # other params (enums, named tuples of JAX's): their own equality, per type
    return (t, value)


def array_key(value: np.ndarray, weak: bool) -> tuple[Any, ...]:
    """The key of an array value: its type and its exact bytes (or their digest)."""
    import hashlib

    data = value.tobytes()
    if len(data) > _SMALL_ARRAY:
        data = hashlib.blake2b(data, digest_size=20).digest()
    return ("const", value.dtype.str, value.shape, weak, data)
