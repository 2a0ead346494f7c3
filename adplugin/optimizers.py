"""`ap.optimizers`: Keras-style optimizers over variables, a thin adapter over optax.

    opt = ap.optimizers.Adam(learning_rate=0.1)
    opt.apply_gradients(zip(grads, variables))

Each variable has its own optimizer state (as Keras' slots), held weakly: a variable that dies
takes its state with it, and a new variable never inherits another's. A `None` gradient skips
that variable only. The update of all the variables given is one jitted step; the learning rate
is an input of that step (a number, or an optax schedule of the iteration count), so changing
it never recompiles. Inside `ap.function` the update compiles into the function's program.

Any optax `GradientTransformation` works through `Optimizer(transform)`; it is applied to each
variable on its own. Transformations that couple variables (global-norm clipping) are the
`global_clipnorm` option of the named optimizers.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin._errors import message
from adplugin.eager.variable import Cell, Variable

try:
    import optax
except ImportError as e:  # pragma: no cover - optax is a declared dependency
    raise ImportError("ap.optimizers needs optax: pip install optax") from e

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop"]

LearningRate = float | Callable[[Any], Any]


class _Slot(Cell):
    """One variable's optimizer state (a pytree of arrays)."""

    __slots__ = ()


class Optimizer:
    """Applies an optax transformation to `ap.Variable`s, each with its own state.

    `Optimizer(transform)` takes a ready optax transformation; the named subclasses build
    theirs from a learning rate (readable and settable as `learning_rate`; an optax schedule
    is evaluated at `iterations`).
    """

    def __init__(self, transform: Any = None, *, learning_rate: LearningRate | None = None,
                 make: Callable[[Any], Any] | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None):
        if (transform is None) == (make is None):
            raise TypeError("Optimizer: pass an optax transformation, or (in subclasses) a "
                            "factory of one from the learning rate")
        self._make = make if make is not None else (lambda lr: transform)
        self._learning_rate = learning_rate
        self._clip = (clipnorm, clipvalue, global_clipnorm)
        self._slots: weakref.WeakKeyDictionary[Variable, _Slot] = weakref.WeakKeyDictionary()
        self._iterations = _Slot(jnp.zeros((), jnp.int32))
        self._step = jax.jit(self._update, static_argnames=("schedule",))

    # --- learning rate and iterations -----------------------------------------------------------

    @property
    def iterations(self) -> int:
        return int(self._iterations._stored)

    @property
    def learning_rate(self) -> float:
        """The current learning rate (a schedule evaluated at `iterations`)."""
        lr = self._learning_rate
        if lr is None:
            raise AttributeError("this optimizer wraps a ready optax transformation: its "
                                 "learning rate is inside it")
        return float(lr(self._iterations._stored)) if callable(lr) else float(lr)

    @learning_rate.setter
    def learning_rate(self, value: LearningRate) -> None:
        if self._learning_rate is None:
            raise AttributeError("this optimizer wraps a ready optax transformation: build a "
                                 "new one to change its learning rate")
        if not callable(value):
            value = float(value)
        self._learning_rate = value

    def _schedule(self) -> Any:
        lr = self._learning_rate
        return lr if callable(lr) else None

    def _lr_input(self) -> Any:
        lr = self._learning_rate
        if lr is None or callable(lr):
            return jnp.zeros((), jnp.float32)  # unused: the step evaluates the schedule
        return jnp.asarray(lr, jnp.float32)

    # --- the update -----------------------------------------------------------------------------

    def _update(self, grads: list[Any], states: list[Any], params: list[Any], lr: Any,
                count: Any, schedule: Any) -> tuple[list[Any], list[Any]]:
        if schedule is not None:
            lr = schedule(count)
        grads = self._clipped(grads)
        transform = self._make(lr)
        new_params, new_states = [], []
        for g, s, p in zip(grads, states, params):
            updates, s = transform.update(g, s, p)
            new_params.append(optax.apply_updates(p, updates))
            new_states.append(s)
        return new_params, new_states

    def _clipped(self, grads: list[Any]) -> list[Any]:
        clipnorm, clipvalue, global_clipnorm = self._clip
        if clipvalue is not None:
            grads = [jnp.clip(g, -clipvalue, clipvalue) for g in grads]
        if clipnorm is not None:
            grads = [g * jnp.minimum(1.0, clipnorm / jnp.maximum(jnp.linalg.norm(g), 1e-12))
                     for g in grads]
        if global_clipnorm is not None:
            norm = optax.global_norm(grads)
            grads = [g * jnp.minimum(1.0, global_clipnorm / jnp.maximum(norm, 1e-12))
                     for g in grads]
        return grads

    def _slot(self, v: Variable) -> _Slot:
        slot = self._slots.get(v)
        if slot is None:  # from the committed value: the state's shape, never a traced value
            slot = self._slots[v] = _Slot(self._make(self._lr_input()).init(v._stored))
        return slot

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> None:
        """One optimizer step. Pairs whose gradient is None are skipped (that variable only);
        no pairs at all is a no-op."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        for g, v in pairs:
            _check_pair(g, v)
        if not pairs:
            return
        variables = [v for _, v in pairs]
        grads = [_gradient_value(g, v) for g, v in pairs]
        slots = [self._slot(v) for v in variables]
        count = self._iterations._read()
        new_params, new_states = self._step(grads, [s._read() for s in slots],
                                            [v.value for v in variables], self._lr_input(),
                                            count, schedule=self._schedule())
        for v, p in zip(variables, new_params):
            v.assign(p)
        for s, st in zip(slots, new_states):
            s._write(st)
        self._iterations._write(count + 1)

    def minimize(self, loss: Any, var_list: list[Variable] | None = None, tape: Any = None
                 ) -> Any:
        """Minimize `loss`: a callable (computed under a tape here; returns the loss), or, in a
        graph being built, a loss tensor (returns the update op to run, as TensorFlow 1)."""
        from adplugin.ir.graph import Tensor

        if isinstance(loss, Tensor):
            from adplugin.ir.training import minimize_in_graph

            return minimize_in_graph(self, loss, var_list)
        from adplugin.eager.tape import GradientTape

        if tape is None:
            if not callable(loss):
                raise TypeError(message("Optimizer.minimize", "the loss is neither callable nor "
                                        "a graph tensor", type(loss).__name__, "a function "
                                        "returning the loss (eager), or a loss tensor in a "
                                        "graph", "pass `lambda: loss_expression`, or a tape"))
            with GradientTape() as tape:
                value = loss()
        else:
            value = loss
        var_list = var_list if var_list is not None else tape.watched_variables()
        self.apply_gradients(zip(tape.gradient(value, var_list), var_list))
        return value


def _check_pair(g: Any, v: Any) -> None:
    if not isinstance(v, Variable):
        raise TypeError(message("Optimizer.apply_gradients", "not a variable",
                                type(v).__name__, "ap.Variable",
                                "wrap trainable arrays in ap.Variable"))
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise TypeError(message("Optimizer.apply_gradients", f"{v.name} is not floating point",
                                v.dtype.name, "a floating-point variable", "optimize float "
                                "variables; keep counters out of the variable list"))
    if tuple(np.shape(g)) != v.shape:
        raise ValueError(message("Optimizer.apply_gradients",
                                 f"gradient shape differs from {v.name}'s",
                                 list(np.shape(g)), list(v.shape),
                                 "pass gradients computed for these variables"))


def _gradient_value(g: Any, v: Variable) -> Any:
    g = g.value if isinstance(g, Variable) else getattr(g, "materialized", g)
    if getattr(g, "dtype", None) == v.dtype:
        return g
    return jnp.asarray(g, v.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""

    def __init__(self, learning_rate: LearningRate = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, **clipping: Any):
        super().__init__(learning_rate=learning_rate, make=lambda lr: optax.sgd(
            lr, momentum=momentum or None, nesterov=nesterov), **clipping)


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015)."""

    def __init__(self, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, **clipping: Any):
        super().__init__(learning_rate=learning_rate, make=lambda lr: optax.adam(
            lr, b1=beta_1, b2=beta_2, eps=epsilon), **clipping)


class AdamW(Optimizer):
    """Adam with decoupled weight decay."""

    def __init__(self, learning_rate: LearningRate = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 **clipping: Any):
        super().__init__(learning_rate=learning_rate, make=lambda lr: optax.adamw(
            lr, b1=beta_1, b2=beta_2, eps=epsilon, weight_decay=weight_decay), **clipping)


class RMSprop(Optimizer):
    """RMSprop."""

    def __init__(self, learning_rate: LearningRate = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7, **clipping: Any):
        super().__init__(learning_rate=learning_rate, make=lambda lr: optax.rmsprop(
            lr, decay=rho, eps=epsilon, momentum=momentum or None), **clipping)


class Adagrad(Optimizer):
    """Adagrad."""

    def __init__(self, learning_rate: LearningRate = 0.001,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 **clipping: Any):
        super().__init__(learning_rate=learning_rate, make=lambda lr: optax.adagrad(
            lr, initial_accumulator_value=initial_accumulator_value, eps=epsilon), **clipping)
