"""Caches keyed by primitive params tell apart what Python's `==` merges.

`True == 1 == 1.0` and `0.0 == -0.0` hash alike; a cache keyed by `params.items()` would hand
an op with `factor=-0.0` the executable (or recorded program, or merged node) built for
`factor=0.0`. Each cache is probed with a primitive whose result shows which param it ran."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin._params import exact, params_key
from adplugin.extend import hlo, ir_constant
from adplugin.transforms.simplify import simplify


def _times_lowering(ctx: Any, x: Any, *, factor: Any) -> Any:
    (aval,) = ctx.avals_in
    return hlo.multiply(x, ir_constant(np.full(aval.shape, factor, aval.dtype)))


times_p = ap.define_primitive(
    "test_keys.times", lowering=_times_lowering,
    jvp=(lambda g, out, x, *, factor: ap.multiply(g, factor),), elementwise=True)


def _signs(out: Any) -> list[bool]:
    return np.signbit(np.asarray(out)).tolist()


X = np.ones(3, np.float32)


def test_params_key_separates_values_equality_merges() -> None:
    distinct = [0.0, -0.0, 1, 1.0, True, np.float32(1), np.int32(1), (1, 2), (1.0, 2),
                float("nan"), None, "1", np.dtype("float32"), "float32"]
    keys = [params_key({"p": v}) for v in distinct]
    assert len(set(keys)) == len(distinct)
    assert params_key({"p": float("nan")}) == params_key({"p": float("nan")})
    assert params_key({"p": [1, 2]}) == params_key({"p": (1, 2)})
    assert exact(np.arange(3)) != exact(np.arange(3.0))
    with pytest.raises(TypeError):
        params_key({"p": {1, 2}})  # not hashable: refused, never guessed


def test_eager_executables_are_per_exact_param() -> None:
    assert _signs(times_p.bind(X, factor=0.0)) == [False] * 3
    assert _signs(times_p.bind(X, factor=-0.0)) == [True] * 3


def test_tape_programs_are_per_exact_param() -> None:
    def grad_signs(factor: float) -> list[bool]:
        x = jnp.ones(3)
        with ap.GradientTape() as tape:
            tape.watch(x)
            y = ap.sum(times_p.bind(x, factor=factor))
        return _signs(tape.gradient(y, x))

    for _ in range(3):  # interpreted, then compiled: both per param
        assert grad_signs(0.0) == [False] * 3
        assert grad_signs(-0.0) == [True] * 3


def test_graph_simplification_does_not_merge_ops_of_other_params() -> None:
    g = ap.Graph()
    x = g.placeholder((3,), np.float32)
    with g:
        outs = [times_p.bind(x, factor=f) for f in (0.0, -0.0, 0.0)]
    small, mapping = simplify(g, outs)
    kept = [n for n in small.nodes if n.op is times_p]
    assert [n.params["factor"] for n in kept] == [0.0, -0.0]
    assert mapping[outs[0].node.id] is mapping[outs[2].node.id]  # equal params still merge
    assert np.signbit(kept[1].params["factor"])
