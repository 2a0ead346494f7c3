"""Keras' optimizer tests, translated case by case into `ap.optimizers` on `ap.Variable`s.

Sources: keras/src/optimizers/{sgd,adam,adamw,rmsprop,adagrad,optimizer}_test.py (Keras 3).
Inputs and expected values (the single steps, the weight-decay values and the golden
trajectories) are Keras'; other references are Keras' update formulas written out in NumPy
here, or optax run by hand.

Left out, with the reason: test_config / test_pickleable_optimizers / test_get_method /
test_set_weights / test_tf_checkpointing (no Keras serialization or `optimizers.get`),
test_ema* (no exponential moving average of the weights), test_static_loss_scaling,
test_gradient_accumulation, test_overwrite_with_gradient*, test_constraints_are_applied,
test_clipnorm_indexed_slices (no loss scaling, gradient accumulation, overwrite-with-gradient
variables, constraints or sparse gradients). Keras' private `_clip_gradients` is checked
through one SGD step with learning rate 1 (the step is then the clipped gradient).
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adplugin as ap
from adplugin import optimizers

GRADS = np.array([1.0, 6.0, 7.0, 2.0], np.float32)
VARS = [1.0, 2.0, 3.0, 4.0]


def _close(a: Any, b: Any, tol: float = 1e-4) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _single_step(opt: optimizers.Optimizer) -> Any:
    v = ap.Variable(np.array(VARS, np.float32))
    opt.apply_gradients(zip([GRADS], [v]))
    return v


# --- test_single_step -------------------------------------------------------------------------

@pytest.mark.parametrize("make,want", [
    (lambda: optimizers.SGD(learning_rate=0.5), [0.5, -1.0, -0.5, 3.0]),
    (lambda: optimizers.Adam(learning_rate=0.5), [0.5, 1.5, 2.5, 3.5]),
    (lambda: optimizers.AdamW(learning_rate=0.5), [0.4980, 1.4960, 2.494, 3.492]),
    (lambda: optimizers.RMSprop(learning_rate=0.5), [-0.5811, 0.4189, 1.4189, 2.4189]),
    (lambda: optimizers.Adagrad(learning_rate=0.5), [0.5233, 1.5007, 2.5005, 3.5061]),
], ids=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_single_step(make: Any, want: list[float]) -> None:
    opt = make()
    v = _single_step(opt)
    _close(v.numpy(), want)
    assert opt.iterations == 1


def test_sgd_single_step_learning_rate_readable() -> None:  # SGD test_single_step's variables
    opt = optimizers.SGD(learning_rate=0.5)
    _single_step(opt)
    assert opt.iterations == 1
    assert opt.learning_rate == 0.5


# --- test_weight_decay ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [optimizers.SGD, optimizers.Adam, optimizers.AdamW,
                                 optimizers.RMSprop, optimizers.Adagrad])
def test_weight_decay(cls: Any) -> None:
    grads = np.zeros((), np.float32)
    var1, var2, var3 = ap.Variable(2.0), ap.Variable(2.0, name="exclude"), ap.Variable(2.0)
    optimizer_1 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_1.apply_gradients(zip([grads], [var1]))

    optimizer_2 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))

    optimizer_3 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_3.exclude_from_weight_decay(var_list=[var3])
    optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))

    np.testing.assert_almost_equal(var1.numpy(), 1.9760959, decimal=6)
    np.testing.assert_almost_equal(var2.numpy(), 2.0, decimal=6)
    np.testing.assert_almost_equal(var3.numpy(), 2.0, decimal=6)


def test_adamw_weight_decay_is_none() -> None:  # AdamW test_weight_decay_is_none
    with pytest.raises(ValueError, match="Argument `weight_decay` must be a float. "
                                         "Received: weight_decay=None"):
        optimizers.AdamW(learning_rate=1.0, weight_decay=None)  # type: ignore[arg-type]


# --- test_correctness_with_golden -------------------------------------------------------------

SGD_GOLDEN = np.array([
    [0.9999] * 10,
    [0.9989, 0.9979, 0.9969, 0.9959, 0.9949, 0.9939, 0.9929, 0.9919, 0.9909, 0.9899],
    [0.9979, 0.9959, 0.9939, 0.9919, 0.9899, 0.9879, 0.9859, 0.9839, 0.9819, 0.9799],
    [0.9969, 0.9939, 0.9909, 0.9879, 0.9849, 0.9819, 0.9789, 0.9759, 0.9729, 0.9699],
    [0.9959, 0.9919, 0.9879, 0.9839, 0.9799, 0.9759, 0.9719, 0.9679, 0.9639, 0.9599]])
ADAGRAD_GOLDEN = np.array([
    [0.9963] * 10,
    [0.9604, 0.9278, 0.9003, 0.8784, 0.8615, 0.8487, 0.8388, 0.8313, 0.8255, 0.8209],
    [0.9251, 0.8629, 0.8137, 0.7768, 0.7497, 0.7298, 0.7151, 0.704, 0.6956, 0.6891],
    [0.8903, 0.8012, 0.7342, 0.6862, 0.6521, 0.6277, 0.6099, 0.5967, 0.5867, 0.579],
    [0.856, 0.7422, 0.6604, 0.6037, 0.5644, 0.5367, 0.5168, 0.5021, 0.491, 0.4825]])
ADAMW_GOLDEN = np.array([
    [0.4998] * 10,
    [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
    [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
    [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
    [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159]])


@pytest.mark.parametrize("make,golden", [
    (lambda: optimizers.SGD(nesterov=True), SGD_GOLDEN),
    (lambda: optimizers.Adam(amsgrad=True),
     np.tile([[0.999], [0.9982], [0.9974], [0.9965], [0.9955]], (1, 10))),
    (lambda: optimizers.AdamW(learning_rate=1.0, weight_decay=0.5, epsilon=2), ADAMW_GOLDEN),
    (lambda: optimizers.RMSprop(centered=True),
     np.tile([[0.9967], [0.9933], [0.9908], [0.9885], [0.9864]], (1, 10))),
    (lambda: optimizers.Adagrad(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6),
     ADAGRAD_GOLDEN),
], ids=["sgd", "adam_amsgrad", "adamw", "rmsprop_centered", "adagrad"])
def test_correctness_with_golden(make: Any, golden: np.ndarray) -> None:
    optimizer = make()
    x = ap.Variable(np.ones([10], np.float32))
    grads = np.arange(0.1, 1.1, 0.1, dtype=np.float32)[:10]
    first_grads = np.full((10,), 0.01, np.float32)
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        _close(x.numpy(), golden[i], tol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


# --- Keras' formulas written out, several steps with momentum ---------------------------------

def _keras_reference(name: str, grads: list[np.ndarray], w: np.ndarray, lr: float) -> Any:
    """Keras 3's update_step formulas, in float64 NumPy."""
    w = w.astype(np.float64)
    m, v, a = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if name == "sgd_nesterov":  # momentum 0.9
            m = 0.9 * m - lr * g
            w = w + 0.9 * m - lr * g
        elif name == "adam":
            m += (g - m) * 0.1
            v += (g * g - v) * 0.001
            w = w - m * lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) / (np.sqrt(v) + 1e-7)
        elif name == "rmsprop_momentum":  # rho 0.9, momentum 0.5
            v = 0.9 * v + 0.1 * g * g
            m = 0.5 * m + lr * g / np.sqrt(v + 1e-7)
            w = w - m
        elif name == "adagrad":
            a = (a if t > 1 else np.full_like(w, 0.1)) + g * g
            w = w - lr * g / np.sqrt(a + 1e-7)
    return w


KERAS_RULES = {
    "sgd_nesterov": lambda lr: optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optimizers.Adam(lr),
    "rmsprop_momentum": lambda lr: optimizers.RMSprop(lr, momentum=0.5),
    "adagrad": lambda lr: optimizers.Adagrad(lr),
}


@pytest.mark.parametrize("name", sorted(KERAS_RULES))
def test_steps_follow_keras_formulas(name: str) -> None:
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(3).astype(np.float32) for _ in range(6)]
    w0 = rng.standard_normal(3).astype(np.float32)
    opt = KERAS_RULES[name](0.05)
    v = ap.Variable(w0)
    for g in grads:
        opt.apply_gradients([(g, v)])
    _close(v.numpy(), _keras_reference(name, grads, w0, 0.05), tol=1e-5)


def test_generic_optax_transformation_matches_optax_by_hand() -> None:
    transform = optax.chain(optax.clip(0.5), optax.adabelief(0.1))
    opt = optimizers.Optimizer(transform)
    v = ap.Variable(np.array([1.0, -2.0, 0.5], np.float32))
    p = jnp.array([1.0, -2.0, 0.5])
    state = transform.init(p)
    for k in range(4):
        g = np.array([0.3, -1.2, 2.0], np.float32) * (k + 1)
        opt.apply_gradients([(g, v)])
        updates, state = transform.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
    _close(v.numpy(), p, tol=1e-6)
    with pytest.raises(AttributeError, match="learning rate is inside it"):
        _ = opt.learning_rate


# --- clipping: test_clip_norm / test_clip_value / test_global_clip_norm / test_clip_args -------

def _clipped_by_sgd(grads: list[np.ndarray], **clip: Any) -> list[np.ndarray]:
    """One SGD step with learning rate 1 from zeros: the variables become -clipped grads."""
    opt = optimizers.SGD(learning_rate=1.0, **clip)
    vs = [ap.Variable(np.zeros_like(g)) for g in grads]
    opt.apply_gradients(zip(grads, vs))
    return [-v.numpy() for v in vs]


@pytest.mark.parametrize("cls", [optimizers.SGD, optimizers.Adam, optimizers.AdamW,
                                 optimizers.RMSprop, optimizers.Adagrad])
def test_clip_norm_and_value_accepted(cls: Any) -> None:
    assert cls(clipnorm=1).clipnorm == 1
    assert cls(clipvalue=1).clipvalue == 1


def test_clip_norm() -> None:
    (got,) = _clipped_by_sgd([np.array([100.0, 100.0], np.float32)], clipnorm=1)
    _close(got, [2**0.5 / 2, 2**0.5 / 2], tol=1e-6)


def test_clip_value() -> None:
    (got,) = _clipped_by_sgd([np.array([100.0, 100.0], np.float32)], clipvalue=1)
    _close(got, [1.0, 1.0], tol=1e-6)


def test_global_clip_norm() -> None:
    grad = np.array([50.0, 100.0], dtype="float32")
    (got,) = _clipped_by_sgd([grad], global_clipnorm=1)
    _close(got, grad / np.linalg.norm(grad), tol=1e-6)
    # across variables: one norm for all of them
    g1, g2 = np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)
    got1, got2 = _clipped_by_sgd([g1, g2], global_clipnorm=1)
    _close(got1, g1 / 5.0, tol=1e-6)
    _close(got2, g2 / 5.0, tol=1e-6)
    # per variable: clipnorm clips each on its own
    got1, got2 = _clipped_by_sgd([g1, g2], clipnorm=1)
    _close(got1, [1.0, 0.0], tol=1e-6)
    _close(got2, [1.0], tol=1e-6)


def test_clip_args() -> None:
    assert optimizers.SGD(learning_rate=1.0, clipnorm=0.1).clipnorm == 0.1
    assert optimizers.SGD(learning_rate=1.0, clipvalue=0.1).clipvalue == 0.1
    assert optimizers.SGD(learning_rate=1.0, global_clipnorm=0.1).global_clipnorm == 0.1
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and "
                                         "`global_clipnorm` can"):
        optimizers.SGD(learning_rate=1.0, clipnorm=0.1, clipvalue=0.1)
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and "
                                         "`global_clipnorm` can"):
        optimizers.SGD(learning_rate=1.0, clipnorm=0.1, global_clipnorm=0.1)


# --- argument validation (rmsprop_test) ---------------------------------------------------------

def test_rmsprop_rejects_out_of_range_arguments() -> None:
    for bad in (-0.1, 1.1, 2.0):
        with pytest.raises(ValueError, match="`rho` must be in"):
            optimizers.RMSprop(learning_rate=0.1, rho=bad)
        with pytest.raises(ValueError, match="`momentum` must be in"):
            optimizers.RMSprop(learning_rate=0.1, momentum=bad)
    for bad in (0, -1e-7):
        with pytest.raises(ValueError, match="must be positive"):
            optimizers.RMSprop(learning_rate=0.1, epsilon=bad)
    optimizers.RMSprop(learning_rate=0.1, rho=0.0)
    optimizers.RMSprop(learning_rate=0.1, rho=1.0)
    optimizers.RMSprop(learning_rate=0.1, momentum=1.0)
    optimizers.RMSprop(learning_rate=0.1, epsilon=1e-12)


# --- optimizer_test: iterations, empty gradients, learning rates ------------------------------

def test_iterations_counter() -> None:
    v = ap.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.ones((2, 2), np.float32)
    optimizer = optimizers.Adam(learning_rate=1.0)
    assert optimizer.iterations == 0
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.iterations == 1
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.iterations == 2


def test_empty_gradients() -> None:
    v = ap.Variable([[3.0, 4.0], [5.0, 6.0]])
    optimizer = optimizers.SGD(learning_rate=1.0)
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        optimizer.apply_gradients([(None, v)])
    assert optimizer.iterations == 0

    v2 = ap.Variable([[3.0, 4.0], [5.0, 6.0]])
    grads2 = np.ones((2, 2), np.float32)
    optimizer = optimizers.SGD(learning_rate=1.0)
    with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
        optimizer.apply_gradients([(None, v), (grads2, v2)])
    _close(v.numpy(), [[3.0, 4.0], [5.0, 6.0]])
    _close(v2.numpy(), [[2.0, 3.0], [4.0, 5.0]])


def test_apply_gradients_of_nothing_is_a_no_op() -> None:
    optimizer = optimizers.Adam(0.1)
    optimizer.apply_gradients([])
    optimizer.apply_gradients(zip([], []))
    assert optimizer.iterations == 0


def test_callable_learning_rate() -> None:
    v = ap.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.ones((2, 2), np.float32)
    optimizer = optimizers.SGD(learning_rate=lambda: 0.1)
    assert optimizer.iterations == 0
    optimizer.apply_gradients([(grads, v)])
    _close(v.numpy(), [[0.9, 1.9], [2.9, 3.9]])
    assert optimizer.iterations == 1


def test_learning_rate_readable_and_settable() -> None:
    v = ap.Variable(np.zeros(2, np.float32))
    opt = optimizers.SGD(learning_rate=0.5)
    assert opt.learning_rate == 0.5
    opt.apply_gradients([(np.ones(2, np.float32), v)])
    opt.learning_rate = 0.25
    assert opt.learning_rate == 0.25
    opt.apply_gradients([(np.ones(2, np.float32), v)])
    _close(v.numpy(), [-0.75, -0.75], tol=1e-7)


def test_learning_rate_schedule_used_at_iterations() -> None:
    # Keras evaluates a schedule at `iterations` before the step: 1.0, 0.5, 0.25, ...
    schedule = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
    v = ap.Variable(np.zeros(1, np.float32))
    opt = optimizers.SGD(learning_rate=schedule)
    seen = []
    for _ in range(4):
        seen.append(opt.learning_rate)
        opt.apply_gradients([(np.ones(1, np.float32), v)])
    assert seen == [1.0, 0.5, 0.25, 0.125]
    _close(v.numpy(), [-1.875], tol=1e-7)
    assert opt.learning_rate == 0.0625


def test_setting_learning_rate_to_a_schedule() -> None:  # test_setting_lr_to_callable_...
    adam = optimizers.Adam(learning_rate=0.001)
    adam.learning_rate = optax.polynomial_schedule(adam.learning_rate, 0.0, 1, 4)
    v = ap.Variable(np.zeros(1, np.float32))
    lrs = []
    for _ in range(5):
        lrs.append(adam.learning_rate)
        adam.apply_gradients([(np.ones(1, np.float32), v)])
    _close(lrs, [0.001, 0.00075, 0.0005, 0.00025, 0.0], tol=1e-9)
    # Adam steps are about lr each (m/sqrt(v) = 1 for a constant gradient)
    _close(v.numpy(), [-np.sum(lrs)], tol=1e-6)


# --- state per variable -----------------------------------------------------------------------

def _adam_alone(w0: np.ndarray, grads: list[np.ndarray], lr: float = 0.1) -> Any:
    """What Adam gives one variable stepped alone, iterations counted from 1."""
    opt = optimizers.Adam(lr)
    v = ap.Variable(w0)
    for g in grads:
        opt.apply_gradients([(g, v)])
    return v.numpy()


def test_state_is_per_variable() -> None:
    w1, w2 = np.array([1.0, 2.0], np.float32), np.array([-3.0], np.float32)
    g1 = [np.array([0.5, -1.0], np.float32), np.array([2.0, 0.1], np.float32)]
    g2 = [np.array([4.0], np.float32), np.array([-0.2], np.float32)]
    opt = optimizers.Adam(0.1)
    v1, v2 = ap.Variable(w1), ap.Variable(w2)
    for a, b in zip(g1, g2):
        opt.apply_gradients([(a, v1), (b, v2)])
    _close(v1.numpy(), _adam_alone(w1, g1), tol=1e-6)
    _close(v2.numpy(), _adam_alone(w2, g2), tol=1e-6)


def test_none_gradient_skips_that_variable_only() -> None:
    w1, w2 = np.array([1.0, 2.0], np.float32), np.array([-3.0], np.float32)
    g = [np.array([0.5, -1.0], np.float32), np.array([2.0, 0.1], np.float32),
         np.array([-1.0, 1.0], np.float32)]
    opt = optimizers.SGD(0.1, momentum=0.9)
    v1, v2 = ap.Variable(w1), ap.Variable(w2)
    opt.apply_gradients([(g[0], v1), (np.ones(1, np.float32), v2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.apply_gradients([(g[1], v1), (None, v2)])
    opt.apply_gradients([(g[2], v1), (np.ones(1, np.float32), v2)])
    # v1's momentum went on through all three steps; v2 kept its value and momentum while skipped
    ref = optimizers.SGD(0.1, momentum=0.9)
    r1, r2 = ap.Variable(w1), ap.Variable(w2)
    for gi in g:
        ref.apply_gradients([(gi, r1)])
    _close(v1.numpy(), r1.numpy(), tol=1e-7)
    for _ in range(2):
        ref.apply_gradients([(np.ones(1, np.float32), r2)])
    _close(v2.numpy(), r2.numpy(), tol=1e-7)
    assert opt.iterations == 3


def test_new_variable_does_not_inherit_state() -> None:
    opt = optimizers.Adagrad(0.5)
    for _ in range(3):  # variables that die, each trained with large gradients
        dead = ap.Variable(np.zeros(2, np.float32))
        opt.apply_gradients([(np.full(2, 10.0, np.float32), dead)])
        del dead
        gc.collect()
    fresh = ap.Variable(np.zeros(2, np.float32))
    opt.apply_gradients([(np.ones(2, np.float32), fresh)])
    # a fresh accumulator: 0.1 + 1, so the step is 0.5 / sqrt(1.1)
    _close(fresh.numpy(), np.full(2, -0.5 / np.sqrt(1.1 + 1e-7)), tol=1e-6)
    assert len(opt._slots) == 1  # the dead variables' state went with them


# --- errors -------------------------------------------------------------------------------------

def test_integer_variables_are_refused() -> None:
    counter = ap.Variable(np.array([1, 2], np.int32))
    with pytest.raises(TypeError, match="not floating point"):
        optimizers.SGD(0.1).apply_gradients([(np.ones(2, np.float32), counter)])


def test_gradient_of_another_shape_and_non_variables_are_refused() -> None:
    v = ap.Variable(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="gradient shape differs"):
        optimizers.SGD(0.1).apply_gradients([(np.ones(3, np.float32), v)])
    with pytest.raises(TypeError, match="not a variable"):
        optimizers.SGD(0.1).apply_gradients([(np.ones(2, np.float32), np.ones(2))])
    with pytest.raises(ValueError, match="`momentum` must be in"):
        optimizers.SGD(0.1, momentum=1.5)


# --- with a tape, and compiled --------------------------------------------------------------

def test_minimize_with_a_tape_matches_the_formula() -> None:
    w = ap.Variable(np.array([1.0, -2.0], np.float32))
    opt = optimizers.SGD(0.1)
    for _ in range(3):
        opt.minimize(lambda: ap.sum(ap.square(w - 3.0)), [w])
    want = np.array([1.0, -2.0])
    for _ in range(3):
        want = want - 0.1 * 2 * (want - 3.0)
    _close(w.numpy(), want, tol=1e-6)
    assert opt.iterations == 3


def test_compiled_train_step_equals_eager_steps() -> None:
    def train(step: Any) -> Any:
        w = ap.Variable(np.array([1.0, -2.0], np.float32))
        opt = optimizers.Adam(0.1)
        losses = [float(step(w, opt)) for _ in range(4)]
        return w.numpy(), losses, opt.iterations

    def eager_step(w: Any, opt: Any) -> Any:
        with ap.GradientTape() as tape:
            loss = ap.sum(ap.square(w - 3.0))
        opt.apply_gradients(zip([tape.gradient(loss, w)], [w]))
        return loss

    w_eager, losses_eager, it_eager = train(eager_step)
    w_fn, losses_fn, it_fn = train(ap.function(eager_step))
    _close(w_fn, w_eager, tol=1e-6)
    _close(losses_fn, losses_eager, tol=1e-6)
    assert it_fn == it_eager == 4
