"""ap.trace: JAX functions legalized into adplugin graphs; values and gradients match JAX."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adplugin as ap
from adplugin._errors import AdpluginError, DerivativeError, OpTypeError
from adplugin.frontends.coverage import FUNCTIONS, coverage
from adplugin.frontends.trace import TracedFunction, TraceError, supported_primitives
from adplugin.ir.graph import GraphError
from adplugin.lowering.run import simplified_program

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


def test_custom_vjp_calls_and_nested_grad() -> None:
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
    # adplugin's primitives show in jaxprs as "ap.<name>"; lax's `+` (last) converts to add
    assert [n.op_name for n in ops] == [e.primitive.name.removeprefix("ap.")
                                        for e in jaxpr.eqns]
    check(fn, x, w)


# ----------------------------------------------------------------------------------------------
# Unsupported primitives: one error listing them all
# ----------------------------------------------------------------------------------------------

def test_unsupported_primitives_are_all_listed() -> None:
    def uses_bits(x: Any, i: Any) -> Any:
        y = jnp.copysign(x, -1.0)  # bitcast_convert_type, shift_right_arithmetic
        return jnp.sum(y * jnp.signbit(x)) + jnp.sum(x.at[i].set(0.0))  # scatter

    with pytest.raises(TraceError) as info:
        ap.trace(uses_bits, rand(5), np.array([1, 3], np.int32))
    text = str(info.value)
    assert isinstance(info.value, AdpluginError) and isinstance(info.value, NotImplementedError)
    for name in ("uses_bits", "bitcast_convert_type (2 equations)", "shift_right_arithmetic",
                 "scatter", "ap.define_primitive"):
        assert name in text, name


def test_unconvertible_params_are_listed_with_the_reason() -> None:
    def fn(x: Any, i: Any) -> Any:  # a two-axis gather and a two-key sort
        return x[i, i].sum() + jax.lax.sort((x, x * 2), num_keys=2)[1].sum()

    with pytest.raises(TraceError, match=r"gather \(could not convert: only.*sort \(could not "
                                         r"convert: sort with num_keys > 1"):
        ap.trace(fn, rand(3, 3), np.array([0, 2], np.int32))


def test_unconvertible_primitives_inside_a_custom_rule_are_listed() -> None:
    @jax.custom_jvp
    def f(x: Any) -> Any:
        return jnp.sin(x)

    f.defjvp(lambda p, t: (f(p[0]), jnp.copysign(t[0], p[0])))  # bit tricks in the rule

    with pytest.raises(TraceError, match=r"bitcast_convert_type \(in custom_jvp_call:f\)"):
        ap.trace(f, rand(3))


def test_supported_primitives_cover_the_documented_set() -> None:
    names = set(supported_primitives())
    for name in ("add", "sub", "mul", "div", "neg", "max", "min", "pow", "integer_pow", "exp",
                 "log", "log1p", "expm1", "sin", "cos", "tanh", "logistic", "sqrt", "rsqrt",
                 "abs", "sign", "square", "eq", "ne", "lt", "le", "gt", "ge", "is_finite",
                 "select_n", "convert_element_type", "stop_gradient", "reduce_sum",
                 "reduce_max", "reduce_min", "broadcast_in_dim", "reshape", "squeeze",
                 "transpose", "dot_general", "concatenate", "slice", "copy", "copy_p", "pjit",
                 "jit", "custom_jvp_call", "custom_vjp_call", "cond", "scan", "while", "rem",
                 "sort", "argmax", "argmin", "erf", "cumsum", "cumprod", "cummax", "cummin",
                 "cumlogsumexp", "reduce_prod", "clamp", "tan"):
        assert name in names, name


# ----------------------------------------------------------------------------------------------
# Custom derivative rules are kept: region nodes differentiate as jax.grad, to second order
# ----------------------------------------------------------------------------------------------

@jax.custom_jvp
def scaled_sin(x: Any) -> Any:
    return jnp.sin(x)


scaled_sin.defjvp(lambda p, t: (scaled_sin(p[0]), 3.0 * jnp.cos(p[0]) * t[0]))  # not sin's


@jax.custom_vjp
def scaled_square(x: Any, y: Any) -> Any:
    return x * x * y


scaled_square.defvjp(lambda x, y: (scaled_square(x, y), (x, y)),
                     lambda r, g: (5.0 * g * r[0] * r[1], g * r[0] ** 2))  # x's: 5/2 of true


EDGE = np.array([[-1.0, 0.0, 0.5], [2.0, -0.0, 1.0]], np.float32)
LOGITS = rand(3, 5)
LABELS = np.asarray(jax.nn.softmax(rand(3, 5) * 3), np.float32)
CUSTOM: dict[str, tuple[Callable[..., Any], tuple[Any, ...], Callable[..., Any] | None]] = {
    # name: (function, operands, the primal differentiated directly (the old behaviour))
    "relu": (jax.nn.relu, (EDGE,), lambda x: jnp.maximum(x, 0.0)),
    "softplus": (jax.nn.softplus, (EDGE,), lambda x: jnp.log1p(jnp.exp(-jnp.abs(x)))
                 + jnp.maximum(x, 0.0)),
    "logsumexp": (lambda x: jax.nn.logsumexp(x, axis=1), (LOGITS,), None),
    "log_softmax": (jax.nn.log_softmax, (LOGITS,), None),
    "softmax_cross_entropy": (optax.softmax_cross_entropy, (LOGITS, LABELS), None),
    "l2_loss": (optax.l2_loss, (LOGITS, LABELS), None),
    "huber_loss": (lambda a, b: optax.huber_loss(a, b, delta=0.3), (LOGITS, LABELS), None),
    "custom_jvp (scaled rule)": (scaled_sin, (EDGE,), jnp.sin),
    "custom_vjp (scaled rule)": (scaled_square, (EDGE, LOGITS[:2, :3]),
                                 lambda x, y: x * x * y),
}


def _weighted(fn: Callable[..., Any]) -> Callable[..., Any]:
    def loss(*args: Any) -> Any:
        out = fn(*args)
        return jnp.sum(out * np.linspace(-1.0, 2.0, out.size).reshape(out.shape))

    return loss


def _traced_loss(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Any, list[Any]]:
    traced = ap.trace(_weighted(fn), *args)
    return traced, traced.outputs[0], traced.inputs


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_rules_differentiate_as_jax_grad(name: str) -> None:
    fn, args, primal = CUSTOM[name]
    traced, loss, xs = _traced_loss(fn, args)
    argnums = tuple(range(len(args)))
    feed = dict(zip(xs, args))
    grads = ap.gradients(loss, xs)
    # second order: the gradient of a weighted sum of the first gradient
    hess = ap.gradients([ap.sum(ap.multiply(g, g)) for g in grads], xs,
                        unconnected_gradients="zero")
    got = traced.graph.run([loss, *grads, *hess], feed)
    want_grads = jax.grad(_weighted(fn), argnums)(*args)

    def grad_norm(*a: Any) -> Any:
        return sum(jnp.sum(g * g) for g in jax.grad(_weighted(fn), argnums)(*a))

    want_hess = jax.grad(grad_norm, argnums)(*args)
    np.testing.assert_allclose(got[0], _weighted(fn)(*args), rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1:], [*want_grads, *want_hess]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    if primal is not None:  # the check can fail: differentiating the primal code differs here
        inlined = jax.grad(_weighted(primal), argnums)(*args)
        assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(inlined, want_grads))


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_rules_under_jax_transformations_of_the_run_graph(name: str) -> None:
    fn, args, _ = CUSTOM[name]
    traced, loss, xs = _traced_loss(fn, args)
    program = simplified_program(traced.graph, [loss], xs)  # what Graph.run jits

    def run(*a: Any) -> Any:
        return program(*a)[0]

    argnums = tuple(range(len(args)))
    got = jax.jit(jax.grad(run, argnums))(*args)
    for g, w in zip(got, jax.grad(_weighted(fn), argnums)(*args)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    got2 = jax.grad(lambda *a: jnp.sum(jax.grad(run)(*a) ** 2))(*args)
    want2 = jax.grad(lambda *a: jnp.sum(jax.grad(_weighted(fn))(*a) ** 2))(*args)
    np.testing.assert_allclose(got2, want2, rtol=1e-4, atol=1e-5)
    batch = [np.stack([a, 0.5 * a]) for a in args]
    got_b = jax.vmap(jax.grad(run))(*batch)
    want_b = jax.vmap(jax.grad(_weighted(fn)))(*batch)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-4, atol=1e-5)


def test_hessians_through_custom_rules() -> None:
    x = np.linspace(-1, 1, 4, dtype=np.float32)

    def smooth(v: Any) -> Any:
        return jnp.sum(jax.nn.softplus(v) ** 2 + jnp.sin(scaled_sin(v)))

    traced = ap.trace(smooth, x)
    (h,) = ap.hessians(traced.outputs[0], traced.inputs)
    np.testing.assert_allclose(traced.graph.run(h, {traced.inputs[0]: x}),
                               jax.hessian(smooth)(x), rtol=1e-5, atol=1e-6)
    program = simplified_program(traced.graph, traced.outputs, traced.inputs)
    np.testing.assert_allclose(jax.hessian(lambda v: program(v)[0])(x),  # forward over reverse
                               jax.hessian(smooth)(x), rtol=1e-5, atol=1e-6)

    y = np.linspace(0.5, 2, 4, dtype=np.float32)

    def rough(a: Any, b: Any) -> Any:
        return jnp.sum(jnp.sin(scaled_square(a, b)))

    traced = ap.trace(rough, x, y)
    program = simplified_program(traced.graph, traced.outputs, traced.inputs)
    np.testing.assert_allclose(jax.jacrev(jax.grad(lambda a, b: program(a, b)[0]))(x, y),
                               jax.jacrev(jax.grad(rough))(x, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(DerivativeError, match="custom_vjp"):  # a documented limit
        jax.hessian(lambda a, b: program(a, b)[0])(x, y)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_regions_run_sharded_over_the_host_devices(axis_type: str) -> None:
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    n = len(jax.devices())
    x = np.linspace(-0.5, 1, 3 * n, dtype=np.float32).reshape(n, 3)  # sum > 0: cond is clear

    def fn(v: Any) -> Any:
        return jax.nn.relu(v) * 2.0 + jax.nn.softplus(v) + _cond(v)

    traced = ap.trace(fn, x)
    program = simplified_program(traced.graph, traced.outputs, traced.inputs)
    mesh = jax.make_mesh((n,), ("x",), axis_types=(getattr(AxisType, axis_type),))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("x", None)))
        out = jax.jit(lambda v: program(v)[0])(sharded)
        grad = jax.jit(jax.grad(lambda v: jnp.sum(program(v)[0])))(sharded)
    np.testing.assert_allclose(out, fn(x), rtol=1e-6)
    np.testing.assert_allclose(grad, jax.grad(lambda v: jnp.sum(fn(v)))(x), rtol=1e-6)


def test_custom_functions_become_region_nodes() -> None:
    traced = ap.trace(lambda x: jax.nn.relu(x) + jax.nn.softplus(x), EDGE)
    text = traced.graph.to_text()
    assert "custom_jvp_call:relu" in text and "custom_jvp_call:logaddexp" in text, text
    traced.graph.verify()


def test_forward_mode_of_custom_vjp_is_an_error_as_in_jax() -> None:
    fn, args, _ = CUSTOM["custom_vjp (scaled rule)"]
    traced = ap.trace(fn, *args)
    with pytest.raises(DerivativeError, match="forward-mode derivative of a custom_vjp"):
        ap.forward_gradients(traced.outputs[0], traced.inputs[:1], [np.ones_like(args[0])])
    program = simplified_program(traced.graph, traced.outputs, traced.inputs)
    with pytest.raises(DerivativeError, match="custom_vjp"):
        jax.jvp(lambda x: program(x, args[1])[0], (args[0],), (np.ones_like(args[0]),))


def test_a_batched_custom_vjp_linearization_transposes_to_the_batched_rule() -> None:
    from adplugin.frontends.regions import custom_vjp_lin_p

    x, y = EDGE, LOGITS[:2, :3]
    traced = ap.trace(scaled_square, x, y)
    region = next(n for n in traced.graph.nodes if n.op_name == "trace.call").params["region"]

    def lin(t: Any, a: Any, b: Any) -> Any:
        return custom_vjp_lin_p.bind(t, a, b, region=region, operand=0, index=0)

    xb, yb = np.stack([x, 2 * x, -x]), np.stack([y, y, 3 * y])
    ct = np.arange(xb.size, dtype=np.float32).reshape(xb.shape)
    got = jax.linear_transpose(lambda t: jax.vmap(lin)(t, xb, yb), np.ones_like(xb))(ct)[0]
    want = jax.vmap(lambda a, b, c: jax.vjp(lambda v: scaled_square(v, b), a)[1](c)[0])(
        xb, yb, ct)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_forward_mode_of_custom_jvp_uses_the_rule() -> None:
    traced = ap.trace(scaled_sin, EDGE)
    (t,) = ap.forward_gradients(traced.outputs[0], traced.inputs, [np.ones_like(EDGE)])
    np.testing.assert_allclose(traced.graph.run(t, {traced.inputs[0]: EDGE}),
                               jax.jvp(scaled_sin, (EDGE,), (np.ones_like(EDGE),))[1],
                               rtol=1e-6)


def test_a_region_refuses_operands_unlike_its_trace() -> None:
    traced = ap.trace(jax.nn.relu, EDGE)
    node = next(n for n in traced.graph.nodes if n.op_name == "trace.call")
    with pytest.raises(OpTypeError, match="trace the function again"):
        node.op.bind(np.ones((4,), np.float32), **node.params)


# ----------------------------------------------------------------------------------------------
# Control flow: cond, scan and loops become regions; JAX differentiates them
# ----------------------------------------------------------------------------------------------

def _cond(x: Any) -> Any:
    return jax.lax.cond(jnp.sum(x) > 0, lambda y: jnp.sin(y) * y, lambda y: jnp.cos(y) + y, x)


def _scan(x: Any) -> Any:
    def step(c: Any, xi: Any) -> tuple[Any, Any]:
        return c * jnp.tanh(xi) + 1.0, jnp.stack([c * xi, c + xi])

    last, ys = jax.lax.scan(step, jnp.ones(x.shape[1]), x)
    return ys.sum(0) * last


def _fori(x: Any) -> Any:
    return jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * 1.5 + i, x)


def _while_static(x: Any) -> Any:  # the trip count (3) is fixed by a constant counter
    def body(c: Any) -> Any:
        return c[0] + 1, jnp.sin(c[1]) * 1.5 + c[0]

    return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1]


@pytest.mark.parametrize("fn, sign", [(_cond, 1.0), (_cond, -1.0), (_scan, 1.0), (_fori, 1.0)],
                         ids=["cond-true", "cond-false", "scan", "fori_loop"])
def test_control_flow_values_and_gradients(fn: Callable[..., Any], sign: float) -> None:
    x = sign * (np.abs(rand(4, 3)) + 0.1)
    traced = check(fn, x)
    assert any(n.op_name == "trace.call" for n in traced.graph.nodes)
    loss, xs = _traced_loss(fn, (x,))[1:]
    (g,) = ap.gradients(loss, xs)
    (h,) = ap.gradients(ap.sum(ap.multiply(g, g)), xs)
    want = jax.grad(lambda v: jnp.sum(jax.grad(_weighted(fn))(v) ** 2))(x)
    np.testing.assert_allclose(loss.graph.run(h, {xs[0]: x}), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fn", [_cond, _scan, _while_static], ids=["cond", "scan", "while"])
def test_control_flow_regions_batch_under_vmap(fn: Callable[..., Any]) -> None:
    # a batched predicate turns the cond into a select (JAX's batching of the equation)
    x = rand(4, 3)
    traced = ap.trace(fn, x)
    program = simplified_program(traced.graph, traced.outputs, traced.inputs)
    batch = np.stack([x, -x, 0.3 * x])
    np.testing.assert_allclose(jax.vmap(lambda v: program(v)[0])(batch), jax.vmap(fn)(batch),
                               rtol=1e-6)
    got = jax.vmap(jax.grad(lambda v: jnp.sum(program(v)[0] ** 2)))(batch)
    reference = _fori if fn is _while_static else fn  # JAX has no reverse mode for the while
    want = jax.vmap(jax.grad(lambda v: jnp.sum(reference(v) ** 2)))(batch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_while_with_a_static_trip_count_becomes_a_scan() -> None:
    x = rand(2, 3)
    traced = ap.trace(_while_static, x)
    assert "while(trips=3)" in traced.graph.to_text()
    np.testing.assert_allclose(traced(x), _while_static(x), rtol=1e-6)
    (g,) = ap.gradients(traced.outputs[0], traced.inputs)
    # JAX cannot reverse-differentiate the while loop itself; the same loop as fori_loop
    want = jax.grad(lambda v: jnp.sum(jax.lax.fori_loop(
        0, 3, lambda i, c: jnp.sin(c) * 1.5 + i, v)))(x)
    np.testing.assert_allclose(traced.graph.run(g, {traced.inputs[0]: x}), want, rtol=1e-5)


def test_while_with_a_dynamic_trip_count_runs_forward_and_refuses_reverse_mode() -> None:
    def doubling(x: Any) -> Any:
        return jax.lax.while_loop(lambda c: jnp.sum(c[1]) < 10.0,
                                  lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]

    x = np.abs(rand(2, 3)) + 0.1
    traced = check(doubling, x, grads=False)
    (t,) = ap.forward_gradients(traced.outputs[0], traced.inputs, [np.ones_like(x)])
    np.testing.assert_allclose(traced.graph.run(t, {traced.inputs[0]: x}),
                               jax.jvp(doubling, (x,), (np.ones_like(x),))[1], rtol=1e-6)
    with pytest.raises(DerivativeError) as info:
        ap.gradients(traced.outputs[0], traced.inputs)
    text = str(info.value)  # the op, why, and the fix
    for part in ("while", "reverse", "lax.scan", "fori_loop with static bounds"):
        assert part in text, part


# ----------------------------------------------------------------------------------------------
# The new conversions
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [
    lambda x: jnp.fmod(x * 7, 0.9) + jax.lax.rem(x * 5, jnp.abs(x) + 0.5),
    lambda x: jnp.sort(x, axis=1) * jnp.arange(4.0) + jnp.sort(x, axis=0)[0],
    lambda x: jnp.take_along_axis(x, jnp.argsort(x, axis=1), axis=1) * jnp.arange(4.0),
    lambda x: x[jnp.argmax(x[:, 0])] * x[jnp.argmin(x[:, 1])],
    lambda x: jax.scipy.special.erf(x) + jax.scipy.special.erfc(x) * x,
    lambda x: jnp.cumsum(x, axis=1) * jax.lax.cumprod(x, axis=0, reverse=True),
    lambda x: jax.lax.cummax(x, axis=1) + jax.lax.cummin(x, axis=0, reverse=True)
    + jax.lax.cumlogsumexp(x, axis=1),
    lambda x: jnp.prod(x, axis=1) + jnp.min(x, axis=0).sum(),
    lambda x: jax.lax.clamp(-0.3, x, 0.4) * jnp.tan(x),
    lambda x: jnp.round(x * 4) + jnp.floor(x * 3) * jnp.ceil(x * 2) * x,
    lambda x: jnp.arcsin(x * 0.9) + jnp.arccos(x * 0.9) + jnp.arctan(x) + jnp.sinh(x)
    + jnp.cosh(x) + jnp.arcsinh(x) + jnp.arctanh(x * 0.9) + jnp.arctan2(x, x + 2)
    + jnp.cbrt(x + 2) + jax.lax.rsqrt(x + 2) + jnp.arccosh(x + 2),
    lambda x: jnp.tile(x, (2, 1)) * jnp.arange(6.0)[:, None],
    lambda x: jnp.searchsorted(jnp.sort(x[0]), x) * x,
    lambda x: jnp.median(x, axis=1) + jnp.percentile(x, 30.0),
], ids=["rem", "sort", "argsort+take_along_axis", "argmax+argmin", "erf", "cumsum+cumprod",
        "cummax+cummin+cumlogsumexp", "reduce_prod+reduce_min", "clamp+tan", "rounding",
        "trigonometry", "tile", "searchsorted", "median+percentile"])
def test_new_conversions(fn: Callable[..., Any]) -> None:
    x = rand(3, 4)
    x[1, :2] = x[1, 2]  # ties
    check(fn, x)


def test_lax_clamp_keeps_its_derivative_at_the_bounds() -> None:
    x = np.array([-1.0, -0.3, 0.0, 0.4, 1.0], np.float32)

    def fn(v: Any) -> Any:
        return jax.lax.clamp(-0.3, v, 0.4)

    traced = check(fn, x)
    (g,) = ap.gradients(traced.outputs[0], traced.inputs)
    got = traced.graph.run(g, {traced.inputs[0]: x})
    np.testing.assert_array_equal(got, [0.0, 0.0, 1.0, 0.0, 0.0])  # lax's: none at the bounds


# ----------------------------------------------------------------------------------------------
# Coverage of jax.numpy and jax.nn (the figure documented in docs/trace.md)
# ----------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "trace.md"


def documented_figures() -> tuple[int, int, int, int]:
    text = DOC.read_text()
    prims = re.search(r"primitives ap.trace converts: (\d+) of (\d+)", text)
    funcs = re.search(r"functions ap.trace converts whole: (\d+) of (\d+)", text)
    assert prims and funcs, "docs/trace.md lost its coverage figures"
    return int(prims[1]), int(prims[2]), int(funcs[1]), int(funcs[2])


def test_coverage_figure_matches_the_documented_one() -> None:
    result = coverage()
    got = (len(result.converted), len(result.primitives), len(result.traced),
           len(result.traced) + len(result.failed))
    assert got == documented_figures(), (got, result.summary())
    assert got[0] / got[1] > 0.9 and got[2] / got[3] > 0.9


def test_coverage_counts_a_missing_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # the planted bug: without the sort rule the figure drops and the docs check would fail
    from adplugin.frontends import lax_rules

    monkeypatch.delitem(lax_rules.RULES, "sort")
    result = coverage({"jnp.sort": FUNCTIONS["jnp.sort"], "jnp.exp": FUNCTIONS["jnp.exp"]})
    assert "sort" in result.missing and result.traced == ["jnp.exp"]


@pytest.mark.parametrize("chunk", range(4))
def test_every_converted_coverage_function_matches_jax(chunk: int) -> None:
    """Values and gradients of every function of the coverage list that ap.trace converts."""
    names = sorted(FUNCTIONS)[chunk::4]
    for name in names:
        fn, args = FUNCTIONS[name]
        try:
            ap.trace(fn, *args)
        except TraceError:
            continue
        check_one_run(fn, *args)


def check_one_run(fn: Callable[..., Any], *args: Any) -> None:
    """`check`, with the values and gradients fetched in one run (one compile)."""
    traced = ap.trace(fn, *args)
    flat_args = jax.tree.leaves(args)
    wrt = [i for i, a in enumerate(flat_args) if _is_float(a)]
    ys = [y for y in traced.outputs if np.issubdtype(y.dtype, np.floating)]
    dxs = ap.gradients(ys, [traced.inputs[i] for i in wrt], unconnected_gradients="zero") \
        if ys and wrt else []
    got = traced.graph.run([*traced.outputs, *dxs], dict(zip(traced.inputs, flat_args)))
    expected = jax.tree.leaves(jax.jit(fn)(*args))
    for g, e in zip(got, expected, strict=False):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-5, atol=2e-5)
    if dxs:
        def total(*float_args: Any) -> Any:
            full = list(flat_args)
            for i, a in zip(wrt, float_args):
                full[i] = a
            outs = fn(*jax.tree.unflatten(jax.tree.structure(args), full))
            return sum(jnp.sum(y) for y in jax.tree.leaves(outs) if _is_float(y))

        ref = jax.grad(total, argnums=tuple(range(len(wrt))))(*[flat_args[i] for i in wrt])
        for g, r in zip(got[len(traced.outputs):], ref):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)
