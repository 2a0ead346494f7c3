"""ap.trace: JAX functions legalized into adplugin graphs; values and gradients match JAX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin._errors import AdpluginError
from adplugin.frontends.trace import TracedFunction, TraceError, supported_primitives
from adplugin.ir.graph import GraphError

RNG = np.random.default_rng(0)


def rand(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, size=shape).astype(np.float32)


def _is_float(x: Any) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.floating))


def check(fn: Callable[..., Any], *args: Any, grads: bool = True) -> TracedFunction:
    """Trace `fn`; its graph verifies, runs to fn's value and differentiates like jax.grad."""
    traced = ap.trace(fn, *args)
    traced.graph.verify()
    expected = jax.jit(fn)(*args)  # jitted references: eager dispatch is slower
    got = traced(*args)
    assert str(jax.tree.structure(got)) == str(jax.tree.structure(expected))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-5, atol=2e-5)
    if not grads:
        return traced
    flat_args = jax.tree.leaves(args)
    wrt = [i for i, a in enumerate(flat_args) if _is_float(a)]
    ys = [y for y in traced.outputs if np.issubdtype(y.dtype, np.floating)]
    dxs = ap.gradients(ys, [traced.inputs[i] for i in wrt], unconnected_gradients="zero")
    feed = dict(zip(traced.inputs, flat_args))
    got_grads = traced.graph.run(dxs, feed)

    def total(*float_args: Any) -> Any:
        full = list(flat_args)
        for i, a in zip(wrt, float_args):
            full[i] = a
        outs = fn(*jax.tree.unflatten(jax.tree.structure(args), full))
        return sum(jnp.sum(y) for y in jax.tree.leaves(outs) if _is_float(y))

    ref = jax.jit(jax.grad(total, argnums=tuple(range(len(wrt)))))(*[flat_args[i] for i in wrt])
    for g, r in zip(got_grads, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)
    traced.graph.verify()
    return traced


# ----------------------------------------------------------------------------------------------
# jax.numpy / jax.nn functions
# ----------------------------------------------------------------------------------------------

def mlp_loss(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> Any:
    w1, b1, w2, b2 = params
    h = jax.nn.relu(x @ w1 + b1)
    h = jax.nn.softplus(h) + jax.nn.sigmoid(h) + jnp.tanh(h)
    out = h @ w2 + b2
    return jnp.mean((out - y) ** 2) + 0.1 * jnp.mean(jax.nn.logsumexp(out, axis=1))


def test_mlp_loss_value_gradients_and_input_names() -> None:
    params = [rand(3, 4), rand(4), rand(4, 2), rand(2)]
    traced = check(mlp_loss, params, rand(5, 3), rand(5, 2))
    assert [t.name for t in traced.inputs] == [
        "params[0]", "params[1]", "params[2]", "params[3]", "x", "y"]


def test_polynomial() -> None:
    def poly(a: Any, b: Any) -> Any:
        return 2 * a * b**2 + 3 * a**2 * b

    traced = check(poly, np.float32(1.5), np.float32(-2.0))
    da, db = ap.gradients(traced.outputs[0], traced.inputs)
    feed = dict(zip(traced.inputs, (1.5, -2.0)))
    # d/da = 2b^2 + 6ab, d/db = 4ab + 3a^2
    np.testing.assert_allclose(traced.graph.run([da, db], feed), [8 - 18, -12 + 6.75], rtol=1e-6)


def test_where_and_comparisons() -> None:
    def fn(x: Any) -> Any:
        y = jnp.where(x > 0.2, x**2, jnp.sin(x)) + jnp.where(x <= -0.5, 1.0, x)
        return jnp.sum(y * (x != 0.3)) + jnp.sum(jnp.clip(x, -0.4, 0.4))

    check(fn, rand(3, 4))


@pytest.mark.parametrize("reduce", [
    lambda x: jnp.sum(x, axis=0),
    lambda x: jnp.mean(x, axis=(0, 2)),
    lambda x: jnp.max(x, axis=1),
    lambda x: jnp.min(x),
    lambda x: jax.nn.logsumexp(x, axis=-1),
    lambda x: jnp.var(x, axis=1),
    lambda x: jax.nn.softmax(x, axis=1),
    lambda x: jnp.cumsum(x, axis=1) + jax.lax.cumsum(x, axis=2, reverse=True),
], ids=["sum", "mean", "max", "min", "logsumexp", "var", "softmax", "cumsum"])
def test_reductions(reduce: Callable[[Any], Any]) -> None:
    check(reduce, rand(2, 3, 4))


def test_boolean_reductions_and_integer_min() -> None:
    def fn(x: Any, i: Any) -> Any:
        return jnp.all(x > -2), jnp.any(x > 0.99), jnp.min(i, axis=0), jnp.max(i)

    check(fn, rand(3, 4), np.array([[3, -7], [-128, 5]], np.int32), grads=False)


@pytest.mark.parametrize("fn, shapes", [
    (lambda a, b: a @ b, [(3, 4), (4, 5)]),
    (lambda a, b: a @ b, [(2, 3, 4), (2, 4, 5)]),
    (lambda a, b: a @ b, [(3, 4), (4,)]),
    (lambda a, b: a.T @ b, [(4, 3), (4, 2)]),
    (lambda a, b: jnp.einsum("bij,bkj->bik", a, b), [(2, 3, 4), (2, 5, 4)]),
    (lambda a, b: jnp.dot(a, b) + jnp.outer(a, b).sum(), [(4,), (4,)]),
], ids=["matrix", "batched", "matvec", "transposed", "einsum", "dot-outer"])
def test_matmul(fn: Callable[..., Any], shapes: list[tuple[int, ...]]) -> None:
    check(fn, *[rand(*s) for s in shapes])


def test_shapes_concatenate_and_transposes() -> None:
    def fn(a: Any, b: Any) -> Any:
        c = jnp.concatenate([a, b.T], axis=0)  # (5, 3)
        d = jnp.transpose(jnp.stack([c, 2 * c]), (2, 0, 1))  # (3, 2, 5)
        e = jnp.expand_dims(d.reshape(6, 5), 0).squeeze(0)[1:5:2, ::-1]
        left, right = jnp.split(jnp.pad(a, ((1, 0), (0, 2))), [2], axis=1)
        return e.sum(axis=0) * a[0, 0] + left.sum() - right[:, ::2].sum() + jnp.flip(a, 1)[0, 0]

    check(fn, rand(2, 3), rand(3, 3))


def test_indexing() -> None:
    def fn(x: Any, i: Any) -> Any:
        rows = x[i]  # gather along axis 0
        cols = jnp.take(x, i[:2], axis=1)
        bumped = x.at[i].add(rows * 2.0)  # scatter-add
        return rows.sum(axis=0) + cols.sum() + bumped[1] + x[i[0]] * x[1, 2]

    check(fn, jnp.asarray(rand(4, 3)), jnp.array([2, 0, -1, 2], jnp.int32))


def test_elementwise_math() -> None:
    def fn(x: Any) -> Any:
        return (jax.lax.rsqrt(x) + jnp.exp2(x) + jnp.tan(x) + x**2.5 + x**-3 + jnp.log1p(x)
                + jnp.expm1(x) / jnp.sqrt(x) + jnp.abs(x - 1) + jnp.sign(x - 1) * jnp.cos(x)
                + jnp.maximum(x, 0.7) - jnp.minimum(x, 0.7) + jnp.square(x).astype(jnp.int32))

    check(fn, rand(3, 4, low=0.2, high=1.2))


def test_pytrees_constants_and_python_scalars() -> None:
    table = jnp.arange(6.0).reshape(2, 3)

    def fn(params: dict[str, Any], scale: Any) -> Any:
        h = jnp.tanh(params["w"] * table + params["b"])
        return {"loss": scale * jnp.sum(h), "h": h, "same": params["b"]}

    params = {"b": rand(3), "w": rand(2, 3)}
    traced = check(fn, params, 2.0)
    assert [t.name for t in traced.inputs] == ["params['b']", "params['w']", "scale"]
    out = traced(params, 3.0)
    assert set(out) == {"loss", "h", "same"}
    np.testing.assert_allclose(out["loss"], fn(params, 3.0)["loss"], rtol=1e-6)
    with pytest.raises(GraphError, match="structured"):
        traced(params)


def test_custom_derivatives_and_nested_grad_are_inlined() -> None:
    @jax.custom_vjp
    def f(x: Any) -> Any:
        return jnp.sin(x) * 2

    f.defvjp(lambda x: (f(x), x), lambda x, g: (2 * g * jnp.cos(x),))

    def fn(x: Any) -> Any:
        inner = jax.grad(lambda y: jnp.sum(jnp.tanh(y) ** 2))(x)  # add_any, transposes, ...
        return jnp.sum(f(x)) + jnp.sum(inner * x) + jnp.sum(jax.jit(jnp.exp)(x))

    check(fn, rand(5))


# ----------------------------------------------------------------------------------------------
# Functions written with ap.* ops map one equation to one node
# ----------------------------------------------------------------------------------------------

def test_ap_function_maps_one_to_one() -> None:
    def fn(x: Any, w: Any) -> Any:
        h = ap.tanh(ap.matmul(x, w))
        z = ap.where(ap.greater(h, 0.0), h, ap.multiply(0.1, h))
        return ap.sum(ap.add(z, ap.expand_dims(ap.logsumexp(x, axis=1), 1))) + ap.mean(
            ap.exp(ap.transpose(x)))

    x, w = rand(3, 4), rand(4, 2)
    jaxpr = jax.make_jaxpr(fn)(x, w).jaxpr
    traced = ap.trace(fn, x, w)
    ops = [n for n in traced.graph.nodes if n.kind == "op"]
    assert len(ops) == len(jaxpr.eqns)
    assert [n.op_name for n in ops] == [e.primitive.name for e in jaxpr.eqns]
    check(fn, x, w)


# ----------------------------------------------------------------------------------------------
# Unsupported primitives: one error listing them all
# ----------------------------------------------------------------------------------------------

def test_unsupported_primitives_are_all_listed() -> None:
    def uses_sort(x: Any) -> Any:
        y = jax.lax.cummax(x, axis=0)
        return jnp.sum(jnp.sort(y) * 2) + jnp.sum(jnp.sort(x)) + x[jnp.argmax(x)]

    with pytest.raises(TraceError) as info:
        ap.trace(uses_sort, rand(5))
    text = str(info.value)
    assert isinstance(info.value, AdpluginError) and isinstance(info.value, NotImplementedError)
    for name in ("uses_sort", "sort (2 equations)", "cummax", "argmax", "ap.define_primitive"):
        assert name in text, name


def test_unconvertible_params_are_listed_with_the_reason() -> None:
    def fn(x: Any, i: Any) -> Any:
        return x[i, i].sum() + jax.lax.cummin(x, axis=1).sum()  # a two-axis gather

    with pytest.raises(TraceError, match=r"cummin.*gather \(could not convert: only"):
        ap.trace(fn, rand(3, 3), np.array([0, 2], np.int32))


def test_supported_primitives_cover_the_documented_set() -> None:
    names = set(supported_primitives())
    for name in ("add", "sub", "mul", "div", "neg", "max", "min", "pow", "integer_pow", "exp",
                 "log", "log1p", "expm1", "sin", "cos", "tanh", "logistic", "sqrt", "rsqrt",
                 "abs", "sign", "square", "eq", "ne", "lt", "le", "gt", "ge", "is_finite",
                 "select_n", "convert_element_type", "stop_gradient", "reduce_sum",
                 "reduce_max", "reduce_min", "broadcast_in_dim", "reshape", "squeeze",
                 "transpose", "dot_general", "concatenate", "slice", "copy", "copy_p", "pjit",
                 "jit", "custom_jvp_call", "custom_vjp_call"):
        assert name in names, name
