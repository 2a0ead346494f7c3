"""TensorFlow's own GradientTape tests, translated case by case (expected values and all).

Source: tensorflow/python/eager/backprop_test.py (classes BackpropTest, JacobianTest,
BatchJacobianTest). Each test is named after the TensorFlow case it translates
(`tf.constant` -> `ap.constant`, `tf.Variable` -> `ap.Variable`, `tf.GradientTape` ->
`ap.GradientTape`, TensorFlow ops -> `ap.*` ops). `backprop.gradients_function(f)(x)` and
`implicit_grad(f)()` are translated to the tape they are built on (watch the arguments, or
read the variables, then `tape.gradient(f(...), ...)`).

Deliberate differences (documented in docs/eager.md):
- integer sources: TensorFlow returns `None` (testGradientInteger); adplugin raises a clear
  `DerivativeError` instead (an integer has no derivative; silently `None` hides the mistake).
- `v.value()` (TensorFlow's recorded read) is `v.read_value()` here: `v.value` is adplugin's
  plain, never-recorded value.
- `tf.identity(x)` has no `ap.identity`; `ap.astype(x, x.dtype)` plays it (a new tensor).
  adplugin's no-op reshapes/transposes return their operand itself (as `jnp` does), which
  is a target that is also a source (tested below).
- `tape.watched_variables()` returns a list (TensorFlow: a tuple).

Left out (feature not in adplugin, with the reason):
- custom gradients (testCustomGradient*, testErrors, testCustomGradientEmptyError,
  testOverrideSecondOrderWithCustomGradient, testCustomGradientForwardprop,
  testJacobianCustomGradient, testInvalidRecordOperationMessage, testRecomputeGrad*):
  adplugin has no `custom_gradient` / `record_operation`; new derivatives are primitives
  with their rules (`ap.define_primitive`). testCustomGradient's training loop is kept with
  the ordinary derivative (its values do not depend on the custom rule).
- string tensors (testTapeGradientStringTarget, testTapeNoOpGradientStringSourceAndTarget,
  the string part of ...IncludeString): adplugin has numeric dtypes only.
- sparse / IndexedSlices / composite tensors (testWatchComposite,
  AggregateIndexedSlicesGradientsTest, the IndexedSlices checks of
  testImplicitGradOverEmbeddingLookup): gradients of `ap.take` are dense.
- graph-mode control flow and functional ops (testGradientInsideLoop, testWhileLoop /
  testPfor*Defun, test_foldl_*, test_cond_func_grad_jacobian,
  test_nested_batch_jacobian_foldl): no `tf.while_loop`/`cond`/`foldl`; eager Python control
  flow is translated (testGradientTapeWithCond / WithWhileLoop).
- ops adplugin lacks: argmax (testStopGradient, testArgmax), conv2d (testMultiValuePreserves...,
  test_grad_jacobian_conv), max_pooling3d, softmax_cross_entropy (written with logsumexp
  below), repeat / strided slices with tensor bounds (test_strided_slice).
- devices and TF internals (testGPU*, testTensorCopy*, testMakeAttr*, testGetAttr*,
  testNameScope, testResourceHandleOutputWithoutHandleData, testMulType,
  testDifferentiatingFunctionThatReturnsNone, test_indexed_slices' pfor comparison,
  testUnknownShapes: a tape over TF1 placeholders; use `ap.gradients` in graphs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin._errors import DerivativeError


def close(a: Any, b: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def f32(x: Any) -> Any:
    return ap.constant(np.asarray(x, np.float32))


def diag(v: Any) -> np.ndarray:
    return np.diag(np.asarray(v))


# ----------------------------------------------------------------------------------------------
# BackpropTest: gradients_function / implicit_grad cases, as tapes
# ----------------------------------------------------------------------------------------------

def test_aggregate_gradients() -> None:  # testAggregateGradients(+WithTensor)
    var_np = np.random.default_rng(0).random((4, 2)).astype(np.float32)
    x = ap.constant(var_np)

    def fn(x: Any) -> Any:
        g1, g2, g3 = (ap.take(x, np.array(i), axis=0) for i in ([0, 1], [2, 3], [1, 3]))
        return g1 * g2 * g3 * ap.sum(x * ap.constant(2.0))

    with ap.GradientTape() as t:
        t.watch(x)
        y = fn(x)
    want = jax.grad(lambda u: jnp.sum(u[jnp.array([0, 1])] * u[jnp.array([2, 3])]
                                      * u[jnp.array([1, 3])] * jnp.sum(u * 2.0)))(var_np)
    close(t.gradient(y, x), want, tol=1e-4)


def test_implicit_grad_with_resource_variable() -> None:  # testImplicitGradWithResourceVariable
    x = ap.Variable(ap.constant(1.0), name="x")
    with ap.GradientTape() as t:
        b = ap.constant(2.0)
        c = ap.add(x.read_value(), b)
        y = ap.add(c, ap.constant(3.0))
    (v,) = t.watched_variables()
    assert v is x
    assert float(t.gradient(y, x)) == 1.0


@pytest.mark.parametrize("decorate", ["NoFunction", "Function"])
def test_no_op_behavior_consistent(decorate: str) -> None:  # testNoOpBehaviorConsistent

    def f(x: Any) -> Any:
        x1 = ap.astype(x, x.dtype)  # tf.identity
        x2, x3, x4 = ap.add(x, 0), ap.subtract(x, 0), ap.multiply(x, 1)
        with ap.GradientTape() as t:
            for s in (x, x1, x2, x3, x4):
                t.watch(s)
            loss = x * 2.0 + x1 * 3.0 + x2 * 3.0 + x3 * 3.0 + x4 * 3.0
        return t.gradient(loss, [x, x1, x2, x3, x4])

    fn = ap.function(f) if decorate == "Function" else f
    close([np.asarray(g) for g in fn(ap.constant(10.0))], [2.0, 3.0, 3.0, 3.0, 3.0])


def test_where_gradient() -> None:  # testWhereGradient
    for value, want in ((5.0, 1.0), (50.0, 100.0)):
        x = ap.constant(value)
        with ap.GradientTape() as t:
            t.watch(x)
            y = ap.where(x < 10, x, x * x)
        assert float(t.gradient(y, x)) == want


def test_two_targets() -> None:  # testTwoTargets
    with ap.GradientTape() as t:
        x, y = ap.constant(3.0), ap.constant(2.0)
        t.watch([x, y])
        xx, yy = 2 * x, 3 * y
    dx, dy = t.gradient([xx, yy], [x, y])
    assert float(dx) == 2.0 and float(dy) == 3.0


def test_stop_gradient_hides_downstream_ops() -> None:  # test_stop_gradient_hides_downstream_ops
    x = ap.constant(1.0)
    with ap.GradientTape() as tape:
        tape.watch(x)
        y = ap.sin(ap.stop_gradient(x)) * 3.0
    assert tape.gradient(y, x) is None


def test_output_grad_used_in_computation() -> None:  # testOutputGradUsedInComputation
    with ap.GradientTape() as t:
        x, y = ap.constant(3.0), ap.constant(2.0)
        t.watch([x, y])
        loss = x * y
    (dx,) = t.gradient([loss, x], [x], output_gradients=[1.0, 2.0])
    assert float(dx) == 4.0


def test_dy() -> None:  # testDy: gradients_function(f)(1., dy=2.) for f(x) = x
    x = ap.constant(1.0)
    with ap.GradientTape() as t:
        t.watch(x)
        y = x
    assert float(t.gradient(y, x, output_gradients=ap.constant(2.0))) == 2.0


def test_gradient_integer_is_refused() -> None:  # testGradientInteger (TF: None; here: an error)
    int_tensor = ap.constant(1)
    with ap.GradientTape() as t:
        t.watch(int_tensor)
        y = int_tensor + int_tensor
    with pytest.raises(DerivativeError, match="not floating point"):
        t.gradient(y, int_tensor)
    v = ap.Variable(3)
    with ap.GradientTape() as t:
        y = v * 2
    with pytest.raises(DerivativeError, match="int32"):
        t.gradient(y, v)


def test_implicit_grad_over_embedding_lookup() -> None:  # testImplicitGradOverEmbeddingLookup
    rng = np.random.default_rng(1)
    random_init = rng.random((20, 8)).astype(np.float32)  # vocab 1000 x 512 in TF: smaller
    x = np.ones(8, np.int32)
    embedding = ap.Variable(random_init, name="embedding")
    with ap.GradientTape() as t:
        y = ap.constant(1.0) - ap.take(embedding, x, axis=0)
    grad = t.gradient(y, embedding)
    want = np.zeros_like(random_init)
    want[1] = -8.0  # eight lookups of row 1, each with d(1 - e)/de = -1
    close(grad, want)
    ap.optimizers.SGD(0.1).apply_gradients([(grad, embedding)])
    close(embedding.read_value(), random_init - 0.1 * want)


def test_implicit_grad_ordering() -> None:  # testImplicitGradOrdering
    v0, v1 = ap.Variable(1.0), ap.Variable(2.0)
    with ap.GradientTape() as t:
        _ = v1 * v1 + v0 * v0
    watched = t.watched_variables()
    assert watched[0] is v0 and watched[1] is v1  # creation order, not read order


def test_tape_no_op_gradient() -> None:  # testTapeNoOpGradient
    x = ap.constant(3.0)
    with ap.GradientTape() as t:
        t.watch(x)
        y = x
    assert float(t.gradient(y, x)) == 1.0


def test_tape_identity_gradient_is_identity() -> None:  # testTapeIdentityGradientIsIdentity
    x = ap.constant(3.0)
    with ap.GradientTape() as t:
        t.watch(x)
        y = ap.astype(x, x.dtype)
    assert float(t.gradient(y, x)) == 1.0
    for identity in (lambda u: ap.reshape(u, ()), ap.transpose, ap.squeeze):
        with ap.GradientTape() as t:  # ops that give back their operand itself
            t.watch(x)
            y = identity(x)
        assert float(t.gradient(y, x)) == 1.0


def test_function_indexed_slices_gradient() -> None:  # testFunctionIndexedSlicesGradient
    @ap.function
    def f(x: Any) -> Any:
        return x + 1

    with ap.GradientTape() as t:
        x = f32([1.0])
        t.watch(x)
        y = ap.take(f(x), np.array([0]), axis=0)
    close(t.gradient(y, x), [1.0])


def test_tape_gradient_multi_target_one_is_source() -> None:  # testTapeGradientMultiTarget...
    x = ap.constant(2.0)
    with ap.GradientTape() as t:
        t.watch(x)
        y = x * x
    assert float(t.gradient([x, y], x)) == 5.0


def test_tape_no_op_gradient_with_multi_target_all_source() -> None:
    x = ap.constant(3.0)
    with ap.GradientTape() as t:
        t.watch(x)
        y = x
    assert float(t.gradient([y, y], x)) == 2.0


def test_tape_no_op_gradient_with_multi_target_multi_source() -> None:  # (+IncludeString)
    x, y = ap.constant(3.0), ap.constant(5.0)
    with ap.GradientTape() as t:
        t.watch(x)
        t.watch(y)
        z = y * y
    close(t.gradient([x, y, z], [x, y]), [1.0, 11.0])


def test_tape_no_op_on_variable_is_identity() -> None:  # testTapeNoOpOnVariableIsIdentity
    v0 = ap.Variable(1.0)
    with ap.GradientTape() as t:
        y = v0.read_value()
    assert float(t.gradient(y, v0)) == 1.0


def test_tape_no_op_gradient_2_by_2() -> None:  # testTapeNoOpGradient(MultiTarget)2By2
    a_2_by_2 = f32(np.full((2, 2), 2.0))
    with ap.GradientTape(persistent=True) as tape:
        tape.watch(a_2_by_2)
    close(tape.gradient(a_2_by_2, [a_2_by_2])[0], np.ones((2, 2)))
    close(tape.gradient([a_2_by_2, a_2_by_2], [a_2_by_2])[0], np.full((2, 2), 2.0))


def test_tape_stop_recording() -> None:  # testTapeStopRecording
    with ap.GradientTape() as t:
        x = ap.Variable(1.0)
        with t.stop_recording():
            y = x * x
    assert t.gradient(y, x) is None


def test_tape_stop_start_recording() -> None:  # testTapeStopStartRecording
    with ap.GradientTape(persistent=True) as t:
        x = ap.Variable(1.0)
        x2 = x * 2  # differentiated through
        with t.stop_recording():
            y = x2 * x2
        z = x2 * x2
    assert t.gradient(y, x2) is None
    assert float(t.gradient(z, x2)) == 4.0  # 2.0 if x*2 were not differentiated through


def test_tape_reset() -> None:  # testTapeReset
    with ap.GradientTape() as t:
        v = ap.Variable(1.0)
        loss = v * v
        t.reset()
        loss += v * v
    assert float(t.gradient(loss, v)) == 2.0


def test_python_max() -> None:  # testPythonMax
    x = [ap.Variable(2.0), ap.Variable(3.0), ap.Variable(5.0)]
    with ap.GradientTape() as t:
        f = max(x)
    grad = t.gradient(f, x)
    assert float(f) == 5.0
    assert grad[0] is None and grad[1] is None and float(grad[2]) == 1.0


def test_automatic_watched_variables() -> None:  # testAutomaticWatchedVariables
    with ap.GradientTape() as t:
        assert len(t.watched_variables()) == 0
        v = ap.Variable(1.0)
        loss = v * v
        assert t.watched_variables() == [v]
        t.reset()
        assert len(t.watched_variables()) == 0
        loss += v * v
        assert t.watched_variables() == [v]


def test_explicit_watched_variables() -> None:  # testExplicitWatchedVariables
    with ap.GradientTape() as t:
        assert len(t.watched_variables()) == 0
        v = ap.Variable(1.0)
        t.watch(v)
        assert t.watched_variables() == [v]
        t.reset()
        assert len(t.watched_variables()) == 0
        t.watch(v)
        assert t.watched_variables() == [v]


def _softmax_cross_entropy(labels: Any, logits: Any) -> Any:
    return ap.logsumexp(logits, axis=-1) - ap.sum(labels * logits, axis=-1)


def test_gradient_none() -> None:  # testGradientNone (softmax cross entropy via logsumexp)
    logits, labels = f32([[0.0, 0.0]]), f32([[1.0, 0.0]])
    with ap.GradientTape() as t:
        t.watch(logits)
        loss = ap.mean(_softmax_cross_entropy(labels, logits), axis=0)
    close(t.gradient(loss, logits), [[-0.5, 0.5]])


def test_gradient_within_tape_block() -> None:  # testGradientWithinTapeBlock
    v1 = ap.Variable(1.0)
    for persistent in (False, True):
        with ap.GradientTape(persistent=persistent) as t:
            loss = 2 * v1
            grad = t.gradient(loss, v1)
        assert float(grad) == 2.0


def test_nested_self_contexts() -> None:  # testNestedSelfContexts
    with ap.GradientTape() as t, pytest.raises(ValueError), t:
        pass


def test_second_grad() -> None:  # testSecondGrad
    f = f32([[0.1]])
    with ap.GradientTape() as outer:
        outer.watch(f)
        with ap.GradientTape() as inner:
            inner.watch(f)
            first = ap.sum(_softmax_cross_entropy(f32([[0.0]]), f), axis=0)
        second = ap.sum(inner.gradient(first, f), axis=0)
    close(outer.gradient(second, f), [[0.0]])


def test_watching_is_tape_local() -> None:  # testWatchingIsTapeLocal
    x1 = ap.Variable(2.0, trainable=False)
    x2 = ap.Variable(2.0, trainable=False)
    with ap.GradientTape() as tape1:
        with ap.GradientTape() as tape2:
            tape1.watch(x1)
            tape2.watch([x1, x2])
            y = x1 ** 3
            z = x2 ** 2
            dy, dz = tape2.gradient([y, z], [x1, x2])
        d2y, d2z = tape1.gradient([dy, dz], [x1, x2])
    assert float(d2y) == 12.0
    assert d2z is None


def test_make_vjp() -> None:  # testMakeVJP / testPersistentMakeVJP
    x = ap.constant(3.0)
    with ap.GradientTape(persistent=True) as t:
        t.watch(x)
        result = x * x
    assert float(result) == 9.0
    assert float(t.gradient(result, x, output_gradients=2.0)) == 12.0
    assert float(t.gradient(result, x, output_gradients=2.0)) == 12.0


def _grad(f: Any, x: Any) -> Any:
    with ap.GradientTape() as t:
        t.watch(x)
        y = f(x)
    return t.gradient(y, x)


def test_grad_grad() -> None:  # testGradGrad / testGradGradExp
    assert float(_grad(lambda x: _grad(lambda u: u * u, x), ap.constant(3.0))) == 2.0
    assert float(_grad(lambda x: _grad(ap.exp, x), ap.constant(0.0))) == 1.0


def test_cpu() -> None:  # testCPU
    assert float(_grad(lambda x: ap.add(ap.add(x, ap.constant(2.0)), ap.constant(3.0)),
                       ap.constant(1.0))) == 1.0


def test_empty_params() -> None:  # testEmptyParams
    x, y = ap.constant(1.0), ap.constant(2.0)
    with ap.GradientTape() as t:
        t.watch([x, y])
        z = x * y
    dx, dy = t.gradient(z, [x, y])
    assert float(dx) == float(y) and float(dy) == float(x)


def test_unconnected_none() -> None:  # testUnconnectedNone
    v = ap.Variable(1.0, name="testUnconnectedNone")
    with ap.GradientTape() as t:
        v.read_value()
        y = ap.constant(1.0)
    assert t.gradient(y, v) is None


def test_gradient_tape_re_enter_context() -> None:  # testGradientTapeReEnterContext
    g = ap.GradientTape()
    with g:
        x = ap.constant(3.0)
        g.watch(x)
        y = 2 * x
    with g:
        z = 2 * y
    close(g.gradient(target=z, sources=[x]), [4.0])


def test_gradient_tape_repeated_source() -> None:  # testGradientTapeRepeatedSource
    with ap.GradientTape(persistent=False) as g:
        x = ap.constant(3.0)
        g.watch(x)
        y = 2 * x
    close(g.gradient(target=y, sources=[x, x]), [2.0, 2.0])


def test_persistent_gradient_tape_repeated_source() -> None:
    with ap.GradientTape(persistent=True) as g:
        x, y = ap.constant(3.0), ap.constant(5.0)
        g.watch(x)
        g.watch(y)
        z = x * x + x * y
    close(g.gradient(target=z, sources=[x, x]), [11.0, 11.0])
    close(g.gradient(target=z, sources=[y, x]), [3.0, 11.0])


def test_gradient_tape_structure() -> None:  # testGradientTapeStructure
    with ap.GradientTape(persistent=True) as g:
        x1, x2, x3 = ap.constant(3.0), ap.constant(3.1), ap.constant(3.2)
        g.watch(x1)
        g.watch(x2)
        g.watch(x3)
        y = x1 + 2 * x2 + 3 * x3

    def values(tree: Any) -> Any:
        return jax.tree.map(float, tree)

    assert values(g.gradient(y, x1)) == 1.0
    assert values(g.gradient(y, (x1,))) == (1.0,)
    assert values(g.gradient(y, (x1, x2))) == (1.0, 2.0)
    assert values(g.gradient(y, [(x1, x2), (x2, x3)])) == [(1.0, 2.0), (2.0, 3.0)]
    assert values(g.gradient(y, (x1, x2, [x1, x3]))) == (1.0, 2.0, [1.0, 3.0])
    assert values(g.gradient(y, [x1, {"x2": x2, "x3": x3}])) == [1.0, {"x2": 2.0, "x3": 3.0}]


def test_gradient_tape() -> None:  # testGradientTape
    with ap.GradientTape() as g:
        x = ap.constant(3.0)
        g.watch(x)
        y = x * x
        with ap.GradientTape() as gg:
            gg.watch(y)
            z = 2 * y
        inner_grad = gg.gradient(z, [y])[0]
        assert float(inner_grad) == 2.0
        y += inner_grad
    assert float(g.gradient(y, [x])[0]) == 6.0


def test_gradient_tape_called_on_constant_target() -> None:  # testGadientTapeCalledOnConstant...
    with ap.GradientTape() as g:
        x = ap.Variable([3.0])
        y = ap.Variable([2.0])
    assert g.gradient(x, y) is None


def test_gradient_tape_with_cond() -> None:  # testGradientTapeWithCond (eager Python `if`)
    x = ap.constant(3.0)
    with ap.GradientTape() as g:
        g.watch(x)
        y = x if bool(x < x) else x * x
    assert float(g.gradient(y, [x])[0]) == 6.0


def test_gradient_tape_with_while_loop() -> None:  # testGradientTapeWithWhileLoop (eager loop)
    i, x = 1, ap.constant(2.0)
    with ap.GradientTape() as g:
        g.watch([x])
        y = x
        while i < 3:
            i, y = i + 1, y * 2
    assert float(g.gradient(y, [x])[0]) == 4.0


@pytest.mark.parametrize("method", ["gradient", "jacobian", "batch_jacobian"])
def test_gradient_tape_called_multiple_times(method: str) -> None:  # test...CalledMultipleTimes
    with ap.GradientTape() as g:
        x = ap.constant([[3.0]])
        g.watch(x)
        y = x * x
        z = y * y
    getattr(g, method)(z, x)
    with pytest.raises(RuntimeError, match="A non-persistent GradientTape can only"):
        getattr(g, method)(y, x)


def test_jacobian_inside_gradient_tape_scope() -> None:  # testJacobianInsideGradientTapeScope
    with ap.GradientTape() as g:
        x = ap.constant(3.0)
        g.watch(x)
        y = x * x
        z = y * y
        close(g.jacobian(z, x), 4.0 * 3.0 ** 3.0)


def test_batch_jacobian_inside_gradient_tape_scope() -> None:
    with ap.GradientTape(persistent=True) as g:
        x = f32([[3.0]])
        g.watch(x)
        y = x * x
        z = y * y
        close(g.batch_jacobian(z, x), [[[4.0 * 3.0 ** 3.0]]])


def test_batch_jacobian_parallel_iterations() -> None:  # testBatchJacobianParallelIterations

    def f(persistent: bool) -> Any:
        with ap.GradientTape(persistent=persistent) as t:
            x = f32([[3.0]])
            t.watch(x)
            y = x * x
            z = ap.concatenate([y * y] * 16, axis=1)  # tf.tile(y * y, [1, 16])
        return t.batch_jacobian(z, x, parallel_iterations=8)

    with pytest.raises(RuntimeError, match="persistent=True.*parallel_iterations"):
        f(persistent=False)
    close(f(persistent=True), [[[4.0 * 3.0 ** 3.0]] * 16])


def test_persistent_tape() -> None:  # testPersistentTape
    with ap.GradientTape(persistent=True) as g:
        x = ap.constant(3.0)
        g.watch(x)
        y = x * x
        z = y * y
    assert float(g.gradient(z, [x])[0]) == 4 * 3 * 3 * 3
    assert float(g.gradient(y, [x])[0]) == 2 * 3


def test_higher_order_gradient() -> None:  # testHigherOrderGradient
    with ap.GradientTape(persistent=True) as g:
        x = ap.constant(3.0)
        g.watch(x)
        y = x ** 3  # y := x^3
        dy_dx = g.gradient(y, x)  # 3x^2, recorded by g itself
        d2y_dx2 = g.gradient(dy_dx, x)  # 6x
    d3y_dx3 = g.gradient(d2y_dx2, x)  # 6
    close(y, 27.0)
    assert float(dy_dx) == 27.0
    assert float(d2y_dx2) == 18.0
    assert float(d3y_dx3) == 6.0


def test_persistent_nested_tape() -> None:  # testPersistentNestedTape
    with ap.GradientTape(persistent=True) as g:
        x = ap.constant(3.0)
        g.watch(x)
        y = x * x
        with ap.GradientTape(persistent=True) as gg:
            gg.watch(y)
            z = 2 * y
        for _ in range(2):
            inner_grad = gg.gradient(z, [y])[0]
            assert float(inner_grad) == 2.0
        y += inner_grad
        del gg
    assert float(g.gradient(y, [x])[0]) == 6.0
    assert float(g.gradient(z, [x])[0]) == 12.0


def test_gradient_tape_variable() -> None:  # testGradientTapeVariable
    v = ap.Variable(1.0, name="v")
    with ap.GradientTape() as g:
        y = v * v
    assert float(g.gradient(y, [v])[0]) == 2.0


def test_nested_gradients() -> None:  # testNestedGradients
    x = ap.constant(3.0)
    with ap.GradientTape() as g:
        g.watch(x)
        y = x * x
        z = y * y
    dz_dx, dz_dy = g.gradient(z, [x, y])
    assert float(dz_dx) == 108.0 and float(dz_dy) == 18.0


def test_unconnected_gradients_default() -> None:  # testUnconnectedGradientsDefault
    x, y = ap.constant(1.0), ap.constant(3.0)
    with ap.GradientTape() as g:
        g.watch([x, y])
        z = y * 2
    assert g.gradient(z, x) is None


def test_unconnected_gradients_zeros() -> None:  # testUnconnectedGradientsZeros
    x, y = f32(np.ones((2, 2))), ap.constant(3.0)
    with ap.GradientTape() as g:
        g.watch([x, y])
        z = y * 2
    close(g.gradient(z, x, unconnected_gradients="zero"), [[0.0, 0.0], [0.0, 0.0]])


def test_unconnected_gradients_variables_zeros() -> None:
    x = ap.Variable(np.ones((2, 2), np.float32))
    y = ap.Variable(ap.constant(3.0))
    with ap.GradientTape() as g:
        g.watch([x, y])
        z = y * 2
    close(g.gradient(z, x, unconnected_gradients="zero"), [[0.0, 0.0], [0.0, 0.0]])
    with ap.GradientTape() as g:
        g.watch([x, y])
        z = y * 2
    close(g.gradient(z, x, unconnected_gradients=ap.UnconnectedGradients.ZERO), np.zeros((2, 2)))


def test_unknown_unconnected_gradients_value_given() -> None:
    x, y = ap.constant(1.0), ap.constant(1.0)
    with ap.GradientTape(persistent=True) as g:
        g.watch([x, y])
        z = y * 2
    with pytest.raises(ValueError, match="Unknown value for unconnected_gradients: 'nonsense'"):
        g.gradient(z, x, unconnected_gradients="nonsense")
    with pytest.raises(ValueError, match="Unknown value for unconnected_gradients"):
        g.jacobian(z, x, unconnected_gradients="nonsense")


def test_unconnected_gradients_nested_defun_zeros() -> None:  # ...NestedDefunZeros
    @ap.function
    def f(x: Any) -> Any:
        return x * x

    def h(y: Any) -> Any:
        return ap.stop_gradient(f(y))

    x = ap.constant(1.0)
    with ap.GradientTape() as g:
        g.watch(x)
        k = x + 2.0
        y = h(k)
    assert float(g.gradient(y, x, unconnected_gradients="zero")) == 0.0


def test_args_gradient_function_and_partial() -> None:  # testArgsGradientFunction / testPartial
    assert float(_grad(lambda x: x * x, ap.constant(1.0))) == 2.0
    two = ap.constant(2.0)
    assert float(_grad(lambda y: two * y, ap.constant(1.0))) == 2.0


def test_return_same_thing() -> None:  # testReturnSameThing: f(x) = (x, 2x)
    x = ap.constant(1.0)
    with ap.GradientTape() as t:
        t.watch(x)
        out = (x, 2 * x)
    assert float(t.gradient(out, x)) == 3.0


def test_exception_safety() -> None:  # testExceptionSafety
    with pytest.raises(ValueError), ap.GradientTape() as t:
        t.watch(ap.constant(1.0))
        raise ValueError()
    assert float(_grad(lambda x: x * x, ap.constant(1.0))) == 2.0


def test_multi_value_convert_to_tensor() -> None:  # testMultiValueConvertToTensor
    x = ap.Variable(ap.constant(np.array([1.0], np.float32)), name="x")
    with ap.GradientTape() as t:
        a = ap.add(x.read_value(), 1.0)
        b = ap.concatenate([ap.expand_dims(a, 0), ap.expand_dims(a, 0)], axis=0)  # stack
        y = ap.mean(b)
    close(t.gradient(y, x), [1.0])


def test_output() -> None:  # testOutput
    x = f32([0.0, 1.0, 2.0])
    with ap.GradientTape() as t:
        t.watch(x)
        out = (x + 2, x * x)
    close(t.gradient(out, x), [1.0, 3.0, 5.0])


def test_same_object_for_multiple_arguments() -> None:  # testSameObjectForMultipleArguments
    for make in (ap.constant, lambda v: ap.constant(np.asarray(v, np.float32)), ap.Variable):
        x = make([[1.0]]) if make is not ap.Variable else make(1.0)
        with ap.GradientTape() as t:
            t.watch(x)
            y = ap.multiply(x, x)
        dx, dy = t.gradient(y, [x, x])  # one object: d(x*x)/dx = 2x for each
        close(dx, 2 * np.asarray(x))
        close(dy, 2 * np.asarray(x))


def test_custom_gradient_training_loop() -> None:  # testCustomGradient (ordinary derivative)
    lr = 0.25
    x = ap.Variable(2.0, name="x")
    losses = []
    for _ in range(5):
        with ap.GradientTape() as t:
            loss = ap.multiply(2.0, x.read_value())
        losses.append(float(loss))
        for grad, var in zip(t.gradient(loss, [x]), [x]):
            var.assign_sub(lr * grad)
    assert losses == [4.0, 3.0, 2.0, 1.0, 0.0]


def test_zeros_cache_doesnt_leak_across_graphs() -> None:  # testZerosCacheDoesntLeakAcrossGraphs

    def get_grad() -> Any:
        t = f32(np.ones((10, 4)))
        x = f32(np.full((10, 4), 2.0))
        with ap.GradientTape() as tape:
            tape.watch(x)
            x1 = x[:, :2]  # array_ops.split(x, 2, axis=1)[0]
            y = ap.concatenate([x1 ** 2, t], axis=1)
        return np.asarray(tape.gradient(y, x))

    grad1, grad2 = get_grad(), get_grad()
    np.testing.assert_array_equal(grad1, grad2)
    want = np.zeros((10, 4), np.float32)
    want[:, :2] = 4.0
    np.testing.assert_array_equal(grad1, want)


def test_selectively_watch_variables() -> None:  # testSelectivelyWatchVariables
    x1, x2 = ap.Variable(1.0), ap.Variable(1.0)
    with ap.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x2)
        y = x1 ** 2
        z = x2 ** 3
    assert tape.watched_variables() == [x2]
    dy, dz = tape.gradient([y, z], [x1, x2])
    assert dy is None
    assert float(dz) == 3.0


def test_differentiating_scalar_cache() -> None:  # testDifferentiatingScalarCache
    with ap.GradientTape(persistent=False) as g:
        x1, x2 = ap.constant(3.0), ap.constant(3.0)
        g.watch(x1)
        g.watch(x2)
        y = x1 + x2
    close(g.gradient(target=y, sources=[x1]), [1.0])


def test_variables_and_constants_produce_the_same_gradients() -> None:

    def get_grads(a: Any, b: Any) -> list[float]:
        with ap.GradientTape() as tape:
            tape.watch([a, b])
            y = a ** 3
            z = b ** 2
        return [float(g) for g in tape.gradient([y, z], [a, b])]

    from_constants = get_grads(ap.constant(2.0), ap.constant(2.0))
    from_variables = get_grads(ap.Variable(2.0), ap.Variable(2.0))
    assert from_constants == from_variables == [12.0, 4.0]


def test_watch_bad_thing() -> None:  # testWatchBadThing
    g = ap.GradientTape()
    with pytest.raises(ValueError, match="ndarray"):
        g.watch(np.array(1.0))


def test_watched_variables_after_non_persistent_gradient_call() -> None:
    with ap.GradientTape(persistent=False) as tape:
        x = ap.Variable(1.0)
        tape.watch(x)
    tape.gradient(x, x)
    assert tape.watched_variables() == [x]


def test_watched_variables_only_has_variables_from_last_tape() -> None:
    with ap.GradientTape(persistent=False) as tape:
        x = ap.Variable(1.0)
        tape.watch(x)
    with ap.GradientTape(persistent=False) as tape:
        z = ap.Variable(2.0)
        tape.watch(z)
    tape.gradient(z, z)
    assert tape.watched_variables() == [z]


def test_watched_variables_respect_reset() -> None:  # testWatchedVariablesRespectReset
    with ap.GradientTape(persistent=False) as tape:
        x = ap.Variable(1.0)
        tape.watch(x)
        assert tape.watched_variables() == [x]
        tape.reset()
        z = ap.Variable(2.0)
        tape.watch(z)
        assert tape.watched_variables() == [z]
    assert float(tape.gradient(z, z)) == 1.0
    assert tape.watched_variables() == [z]


# ----------------------------------------------------------------------------------------------
# JacobianTest and BatchJacobianTest
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_pfor", [True, False])
def test_jacobian(use_pfor: bool) -> None:  # JacobianTest.testPfor / testWhileLoop
    with ap.GradientTape(persistent=not use_pfor) as g:
        x, y = f32([1.0, 2.0]), f32([3.0, 4.0])
        g.watch(x)
        g.watch(y)
        z = x * x * y
    jacobian = g.jacobian(z, [x, y], experimental_use_pfor=use_pfor)
    xs, ys = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    close(jacobian[0], diag(2 * xs * ys))
    close(jacobian[1], diag(xs * xs))


def test_jacobian_persistent_tape() -> None:  # JacobianTest.testPersistentTape
    with ap.GradientTape() as g:
        x = f32([1.0, 2.0])
        g.watch(x)
        y = x * x
    with pytest.raises(RuntimeError, match="persistent"):
        g.jacobian(y, x, experimental_use_pfor=False)


def test_jacobian_parallel_iterations() -> None:  # JacobianTest.test_parallel_iterations
    x_np = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    with ap.GradientTape(persistent=True) as g:
        x = ap.constant(x_np)
        g.watch(x)
        y = ap.matmul(x, x)
    j2, j3 = g.jacobian(y, x, parallel_iterations=2), g.jacobian(y, x, parallel_iterations=3)
    close(j2, j3)
    close(j2, jax.jacrev(lambda u: u @ u)(x_np))


def test_nested_jacobian() -> None:  # JacobianTest.test_nested_jacobian
    x = f32(np.ones((10, 2)))
    with ap.GradientTape(persistent=False) as g:
        g.watch(x)
        with ap.GradientTape(persistent=False) as gg:
            gg.watch(x)
            y = ap.sum(ap.square(x))
        dy_x = gg.jacobian(y, x)
    dy_xx = g.batch_jacobian(dy_x, x)
    close(dy_xx, [[[2.0, 0.0], [0.0, 2.0]]] * 10)


def test_jacobian_indexed_slices() -> None:  # JacobianTest.test_indexed_slices
    inp_np = np.random.default_rng(2).random((3, 2)).astype(np.float32)
    with ap.GradientTape(persistent=True) as g:
        inp = ap.constant(inp_np)
        g.watch(inp)
        output = ap.take(inp, np.array([0, 2]), axis=0)
    want = jax.jacrev(lambda u: u[jnp.array([0, 2])])(inp_np)
    close(g.jacobian(output, inp, experimental_use_pfor=True), want)
    close(g.jacobian(output, inp, experimental_use_pfor=False), want)


def test_empty_tensor_consistent_jacobian() -> None:  # test_empty_tensor_consistent_jacobian
    variable = ap.Variable(1.0)
    rng = np.random.default_rng(3)
    inputs = (rng.uniform(size=(0, 4)), rng.uniform(size=(0, 3)))
    with ap.GradientTape(persistent=True) as tape:
        outputs = variable * ap.astype(ap.concatenate(
            [ap.constant(i.astype(np.float32)) for i in inputs], axis=-1), np.float32)
    jac_pfor = tape.jacobian(outputs, variable, experimental_use_pfor=True)
    jac_loop = tape.jacobian(outputs, variable, experimental_use_pfor=False)
    assert np.shape(jac_pfor) == np.shape(jac_loop) == (0, 7)


def test_jacobian_unconnected_and_unread() -> None:  # jacobian of unconnected sources
    x, u = f32([1.0, 2.0]), f32([5.0, 6.0, 7.0])
    never_read = ap.Variable(np.ones(3, np.float32))
    with ap.GradientTape(persistent=True) as g:
        g.watch([x, u])
        y = x * x
    jx, ju, jv = g.jacobian(y, [x, u, never_read])
    close(jx, diag([2.0, 4.0]))
    assert ju is None and jv is None
    ju, jv = g.jacobian(y, [u, never_read], unconnected_gradients="zero")
    close(ju, np.zeros((2, 3)))
    close(jv, np.zeros((2, 3)))


def _batch_jacobian(use_pfor: bool) -> Any:
    with ap.GradientTape(persistent=not use_pfor) as g:
        x = f32([[1.0, 2.0], [3.0, 4.0]])
        y = f32([[3.0, 4.0], [5.0, 6.0]])
        g.watch(x)
        z = x * x * y
    return g.batch_jacobian(z, x, experimental_use_pfor=use_pfor)


# array_ops.stack([diag(2 * x[0] * y[0]), diag(2 * x[1] * y[1])])
_BATCH_ANSWER = np.stack([diag([2.0 * 1 * 3, 2.0 * 2 * 4]), diag([2.0 * 3 * 5, 2.0 * 4 * 6])])


@pytest.mark.parametrize("use_pfor", [True, False])
def test_batch_jacobian(use_pfor: bool) -> None:  # BatchJacobianTest.testPfor / testWhileLoop
    close(_batch_jacobian(use_pfor), _BATCH_ANSWER)


@pytest.mark.parametrize("use_pfor", [True, False])
def test_batch_jacobian_function(use_pfor: bool) -> None:  # testPforDefun / testWhileLoopDefun
    close(ap.function(lambda: _batch_jacobian(use_pfor))(), _BATCH_ANSWER)


def test_batch_jacobian_persistent_tape() -> None:  # BatchJacobianTest.testPersistentTape
    with ap.GradientTape() as g:
        x = f32([[1.0, 2.0]])
        g.watch(x)
        y = x * x
    with pytest.raises(RuntimeError, match="persistent"):
        g.batch_jacobian(y, x, experimental_use_pfor=False)


def test_batch_jacobian_bad_shapes() -> None:  # testBadShape / testBadInputRank / ...OutputRank
    x = f32(np.ones((2, 3)))
    with ap.GradientTape() as g:
        y = ap.concatenate([x, x], axis=0)
    with pytest.raises(ValueError, match="Need first dimension"):
        g.batch_jacobian(y, x)
    x = f32(np.ones(2))
    with ap.GradientTape() as g:
        y = f32(np.ones((2, 2)))
    with pytest.raises(ValueError, match="must have rank at least 2"):
        g.batch_jacobian(y, x)
    x = f32(np.ones((2, 2)))
    with ap.GradientTape() as g:
        y = f32(np.ones(2))
    with pytest.raises(ValueError, match="must have rank at least 2"):
        g.batch_jacobian(y, x)


def test_batch_jacobian_parallel_iterations_persistent() -> None:  # test_parallel_iterations
    x_np = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    w_np = np.array([[1.0, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    with ap.GradientTape(persistent=True) as g:
        x = ap.constant(x_np)
        g.watch(x)
        y = ap.matmul(x, ap.constant(w_np))
    j2, j3 = (g.batch_jacobian(y, x, parallel_iterations=n) for n in (2, 3))
    close(j2, j3)
    close(j2, np.stack([w_np.T, w_np.T]))


@pytest.mark.parametrize("use_function", [True, False])
@pytest.mark.parametrize("use_pfor", [True, False])
def test_degenerate_shape(use_function: bool, use_pfor: bool) -> None:  # test_degenerate_shape

    def f(x: Any) -> Any:
        with ap.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = x ** 2
        return tape.batch_jacobian(y, x, experimental_use_pfor=use_pfor)

    fn = ap.function(f) if use_function else f
    assert tuple(np.shape(fn(f32(np.zeros((1, 0)))))) == (1, 0, 0)


@pytest.mark.parametrize("use_pfor", [True, False])
def test_zeros_type_correct(use_pfor: bool) -> None:  # test_zeros_type_correct
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            for unconnected in ("none", "zero"):
                with ap.GradientTape(persistent=True) as tape:
                    x = ap.constant(np.array([[2.0]], dtype))
                    tape.watch(x)
                    y = ap.constant(np.array([[1.0]], dtype))  # f ignores x
                jac = tape.batch_jacobian(y, x, unconnected_gradients=unconnected,
                                          experimental_use_pfor=use_pfor)
                assert np.dtype(jac.dtype) == dtype
                close(jac, [[[0.0]]])


# ----------------------------------------------------------------------------------------------
# Failures seen before the rewrite (issue 7), each as TensorFlow's semantics say
# ----------------------------------------------------------------------------------------------

def test_read_value_is_recorded_and_assignments_seen_by_later_reads() -> None:
    v = ap.Variable(1.0)
    with ap.GradientTape(persistent=True) as t:
        a = v.read_value() * v  # read at 1.0
        v.assign(3.0)
        b = v * v  # read at 3.0: differentiated at the new value
        v.assign_add(1.0)
        c = ap.square(v.read_value())  # 4.0
    assert float(a) == 1.0 and float(b) == 9.0 and float(c) == 16.0
    assert float(t.gradient(b, v)) == 6.0
    assert float(t.gradient([a, b, c], v)) == 2.0 + 6.0 + 8.0  # sum over every version read


def test_assigning_a_recorded_value_is_not_differentiated() -> None:
    w, v = ap.Variable(2.0), ap.Variable(0.0)
    with ap.GradientTape(persistent=True) as t:
        v.assign(w * 5.0)  # an assignment is not a differentiable op (TensorFlow)
        y = v * 1.0
    assert float(y) == 10.0
    assert t.gradient(y, w) is None
    assert float(t.gradient(y, v)) == 1.0


def test_nested_reset_leaves_the_outer_tape_intact() -> None:
    x = ap.constant(2.0)
    with ap.GradientTape() as outer:
        outer.watch(x)
        with ap.GradientTape() as inner:
            inner.watch(x)
            y = x * x
            inner.reset()
            z = y * x
        assert inner.gradient(z, x) is None  # inner forgot watching x
    assert float(outer.gradient(z, x)) == 12.0  # 3x^2


def test_unconnected_zero_on_nested_tapes() -> None:
    x, y = f32(np.ones(3)), ap.constant(3.0)
    with ap.GradientTape() as outer:
        outer.watch([x, y])
        with ap.GradientTape() as inner:
            inner.watch([x, y])
            z = y * 2
        dz_dx = inner.gradient(z, x, unconnected_gradients="zero")
    close(dz_dx, np.zeros(3))
    assert outer.gradient(z, x) is None


def test_stop_gradient_outputs_as_sources() -> None:
    x = ap.constant(3.0)
    with ap.GradientTape(persistent=True) as t:
        t.watch(x)
        s = ap.stop_gradient(x * x)
        t.watch(s)
        y = s * x
    assert float(t.gradient(y, s)) == 3.0
    assert float(t.gradient(y, x)) == 9.0  # only the direct path: s is a constant for x
    assert t.gradient(s, x) is None
    assert float(t.gradient(s, x, unconnected_gradients="zero")) == 0.0


def test_stop_gradient_path_matches_graph_gradients() -> None:
    x = ap.constant(1.5)
    with ap.GradientTape() as t:
        t.watch(x)
        y = ap.stop_gradient(ap.sin(x)) * 2.0
    taped = t.gradient(y, x)
    with ap.Graph():
        xg = ap.placeholder((), name="x")
        (graphed,) = ap.gradients(ap.stop_gradient(ap.sin(xg)) * 2.0, [xg])
    assert taped is None and graphed is None


def test_reading_a_variable_after_the_loss_keeps_later_steps_right() -> None:
    w, b = ap.Variable(np.float32(1.0)), ap.Variable(np.float32(0.5))
    for step in range(5):
        with ap.GradientTape() as t:
            loss = ap.square(w * 2.0 + b)
            if step % 2:
                _ = b * 3.0  # a read after the loss on some steps only
        gw, gb = t.gradient(loss, [w, b])
        r = 2 * (2.0 * float(w.value) + float(b.value))
        close(gw, 2.0 * r)
        close(gb, r)
        w.assign_sub(0.01 * gw)
