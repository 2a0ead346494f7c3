"""`ap.explain_gradient`: each reason a gradient is None, planted and named (with the node and
the source line that cut the path), for tapes and graphs; and the warning `tape.gradient`
gives, once per call site, with the same text."""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin.eager.explain import NoneGradientWarning


def here(offset: int = 1) -> str:
    """"file:line" of the caller's line + offset (where the planted op is)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return f"{frame.f_back.f_code.co_filename}:{frame.f_back.f_lineno + offset}"


def quiet_gradient(tape: Any, target: Any, sources: Any, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoneGradientWarning)
        return tape.gradient(target, sources, **kw)


def test_never_used() -> None:
    x, z = ap.constant(1.0), ap.constant(2.0)
    with ap.GradientTape() as tape:
        tape.watch([x, z])
        y = ap.sin(z)
    assert quiet_gradient(tape, y, x) is None
    text = ap.explain_gradient(y, x, tape)
    assert "is None" in text and "never used" in text
    assert "cut" not in text and "not watched" not in text


def test_python_operators_on_a_raw_jax_array_are_not_recorded() -> None:
    x = jnp.float32(2.0)
    with ap.GradientTape() as tape:
        tape.watch(x)
        y = x * x  # jax.Array's own operator: JAX computes it, no tape sees it
    text = ap.explain_gradient(y, x, tape)
    assert "plain jax.Array" in text and "jax.numpy" in text and "ap.multiply" in text
    assert isinstance(y, type(x))  # the planted mistake: a plain array came out


def test_a_jax_numpy_detour_inside_recorded_ops_is_pointed_at() -> None:
    v = ap.Variable(3.0)
    x = jnp.float32(0.5)
    with ap.GradientTape(persistent=True) as tape:
        tape.watch(x)
        where = here()
        y = ap.multiply(v, jnp.exp(x))  # jnp.exp(x) enters the recording as a plain array
    assert float(quiet_gradient(tape, y, v)) == pytest.approx(np.exp(0.5))
    assert quiet_gradient(tape, y, x) is None
    text = ap.explain_gradient(y, x, tape)
    assert "never used" in text and "entered the tape unwatched" in text
    assert where in text and "jax.numpy" in text


def test_cut_by_stop_gradient_at_a_node_with_its_source_line() -> None:
    x = ap.constant(1.5)
    with ap.GradientTape() as tape:
        tape.watch(x)
        where = here()
        s = ap.stop_gradient(ap.sin(x))
        y = s * 2.0
    assert quiet_gradient(tape, y, x) is None
    text = ap.explain_gradient(y, x, tape)
    node = s.node.node.id
    assert f"stop_gradient at node %{node}" in text
    assert where in text


def test_cut_by_an_integer_cast_at_a_node_with_its_source_line() -> None:
    x = ap.constant(2.7)
    with ap.GradientTape() as tape:
        tape.watch(x)
        where = here()
        i = ap.astype(x * 3.0, np.int32)
        y = ap.astype(i, np.float32) * 2.0
    assert quiet_gradient(tape, y, x) is None
    text = ap.explain_gradient(y, x, tape)
    assert f"integer cast (to int32) at node %{i.node.node.id}" in text
    assert where in text


def test_not_watched_names_what_each_tape_watches() -> None:
    x, w = ap.constant(1.0), ap.constant(2.0)
    with ap.GradientTape() as tape:
        tape.watch(w)
        y = x * w
    assert quiet_gradient(tape, y, x) is None
    text = ap.explain_gradient(y, x, tape)
    assert "not watched by this tape" in text
    assert re.search(r"Tape 0 .* watches: array %\d+ float32\[\]", text)


def test_not_watched_by_the_outer_tape_but_by_the_inner_one() -> None:
    x = ap.constant(1.0)
    with ap.GradientTape() as outer, ap.GradientTape() as inner:
        inner.watch(x)
        y = x * x
    assert quiet_gradient(outer, y, x) is None
    text = ap.explain_gradient(y, x, outer)
    assert "not watched by this tape" in text and "tape(s) [1]" in text


@pytest.mark.parametrize("case", ["untrainable", "no_auto_watch"])
def test_variables_not_watched_say_why(case: str) -> None:
    v = ap.Variable(1.0, trainable=case != "untrainable")
    with ap.GradientTape(watch_accessed_variables=case != "no_auto_watch") as tape:
        y = v * 2.0
    assert quiet_gradient(tape, y, v) is None
    text = ap.explain_gradient(y, v, tape)
    assert "not watched" in text
    assert ("trainable=False" if case == "untrainable" else "watch_accessed_variables=False") \
        in text


def test_a_variable_never_read_while_recording() -> None:
    v, w = ap.Variable(1.0), ap.Variable(2.0)
    with ap.GradientTape() as tape:
        y = w * 3.0
    assert quiet_gradient(tape, y, v) is None
    assert "never read" in ap.explain_gradient(y, v, tape)


def test_integer_source_and_connected_gradient() -> None:
    i = ap.constant(3)
    assert "dtype int32" in ap.explain_gradient(ap.constant(1.0), i)
    x = ap.constant(1.0)
    with ap.GradientTape() as tape:
        tape.watch(x)
        y = ap.sin(x)
    assert "is not None" in ap.explain_gradient(y, x, tape)
    assert tape.gradient(y, x) is not None


def test_tape_none_uses_the_targets_recording() -> None:
    x = ap.constant(1.0)
    with ap.GradientTape() as tape:
        tape.watch(x)
        y = ap.stop_gradient(x) * x * 0.0 + ap.stop_gradient(x)
        y2 = ap.stop_gradient(x * 2.0)
    del tape
    assert "stop_gradient at node" in ap.explain_gradient(y2, x)
    assert "is not None" in ap.explain_gradient(y, x)  # x * ... is a live path (value 0)


def test_several_targets_explained_one_by_one() -> None:
    x, z = ap.constant(1.0), ap.constant(2.0)
    with ap.GradientTape() as tape:
        tape.watch([x, z])
        a, b = ap.stop_gradient(x) * z, ap.sin(z)
    text = ap.explain_gradient([a, b], x, tape)
    assert text.startswith("Target 0:") and "\nTarget 1:" in text
    assert "stop_gradient" in text and "never used" in text


# ----------------------------------------------------------------------------------------------
# Graphs (tape=None)
# ----------------------------------------------------------------------------------------------

def test_graph_reasons() -> None:
    with ap.Graph() as g:
        a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b")
        cut = ap.stop_gradient(a * a) + b
        cast = ap.astype(ap.astype(a, np.int32), np.float32) * b
        live = ap.sin(a) * b
        unused = ap.cos(b)
        v, never = ap.Variable(2.0), ap.Variable(1.0)
        uses_v = v * b
    assert ap.gradients(cut, [a]) == [None]
    sg = next(n for n in g.nodes if n.op_name == "stop_gradient")
    assert f"stop_gradient at node %{sg.id}" in ap.explain_gradient(cut, a)
    conv = next(n for n in g.nodes if n.op_name == "convert_element_type"
                and n.output.dtype == np.int32)
    assert f"integer cast (to int32) at node %{conv.id}" in ap.explain_gradient(cast, a)
    assert "never used" in ap.explain_gradient(unused, a)
    assert "is not None" in ap.explain_gradient(live, a)
    assert "is not None" in ap.explain_gradient(uses_v, v)
    assert "never read" in ap.explain_gradient(uses_v, never)
    with ap.Graph():
        other = ap.placeholder((), name="other")
    assert "another graph" in ap.explain_gradient(live, other)


# ----------------------------------------------------------------------------------------------
# The warning of tape.gradient
# ----------------------------------------------------------------------------------------------

def test_gradient_warns_once_per_call_site_with_the_same_text() -> None:
    texts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            x = ap.constant(1.5)
            with ap.GradientTape() as tape:
                tape.watch(x)
                y = ap.stop_gradient(x) * 2.0
            texts.append(ap.explain_gradient(y, x, tape))
            assert tape.gradient(y, x) is None  # one call site, three calls
    mine = [w for w in caught if issubclass(w.category, NoneGradientWarning)]
    assert len(mine) == 1
    assert texts[0] in str(mine[0].message)
    assert mine[0].filename == __file__  # points at the caller of gradient()


def test_no_warning_for_zeros_or_unwatched_sources() -> None:
    x, z = ap.constant(1.0), ap.constant(2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ap.GradientTape(persistent=True) as tape:
            tape.watch(z)
            y = ap.sin(z)
        assert float(tape.gradient(y, x, unconnected_gradients="zero")) == 0.0
        assert tape.gradient(y, x) is None  # x is not watched: nothing to explain
    assert not [w for w in caught if issubclass(w.category, NoneGradientWarning)]
