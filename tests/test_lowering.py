"""Lowering a graph: StableHLO text, cost and memory analysis, export and serialization."""

from __future__ import annotations

import jax
import numpy as np

import adplugin as ap


def _model() -> tuple[ap.Graph, list[ap.Tensor], dict[ap.Tensor, np.ndarray]]:
    with ap.Graph() as g:
        x = ap.placeholder((4, 3), name="x")
        w = ap.placeholder((3,), name="w")
        y = ap.sum(ap.tanh(ap.matmul(x, w)))
        (gw,) = ap.gradients(y, [w])
    assert gw is not None
    feed = {x: np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
            w: np.arange(3, dtype=np.float32)}
    return g, [y, gw], feed


def test_lowered_program_text_and_analyses() -> None:
    g, fetches, feed = _model()
    lowered = g.lower(fetches, feed)
    text = lowered.as_text()
    for op in ("stablehlo.dot_general", "stablehlo.tanh", "stablehlo.reduce"):
        assert op in text
    assert "custom_call" not in text
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["flops"] > 0
    assert compiled.memory_analysis().argument_size_in_bytes == (12 + 3) * 4


def test_export_serializes_and_runs_without_the_graph() -> None:
    g, fetches, feed = _model()
    blob = g.export(fetches, feed).serialize()
    restored = jax.export.deserialize(blob)
    ordered = [feed[t] for t in sorted(feed, key=lambda t: t.node.id)]
    for got, want in zip(restored.call(*ordered), g.run(fetches, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
