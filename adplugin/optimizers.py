"""`ap.optimizers`: Keras-style optimizers over variables, a thin adapter over optax.

    opt = ap.optimizers.Adam(learning_rate=0.1)
    opt.apply_gradients(zip(grads, variables))

Any optax `GradientTransformation` works through `Optimizer(transform)`; the named classes
are conveniences. The update of all variables is one jitted optax step (compiled once per
set of variable shapes), and the optimizer state lives with the optimizer, per variable list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from adplugin._errors import message
from adplugin.eager.variable import Variable

try:
    import optax
except ImportError as e:  # pragma: no cover - optax is a declared dependency
    raise ImportError("ap.optimizers needs optax: pip install optax") from e

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop"]


def _apply(transform: Any, grads: list[Any], state: Any, params: list[Any]) -> tuple[Any, Any]:
    updates, state = transform.update(grads, state, params)
    return optax.apply_updates(params, updates), state


class Optimizer:
    """Applies an optax transformation to `ap.Variable`s."""

    def __init__(self, transform: Any):
        self.transform = transform
        self._states: dict[tuple[int, ...], Any] = {}
        self._step = jax.jit(lambda g, s, p: _apply(transform, g, s, p))
        self.iterations = 0

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> None:
        """One optimizer step; pairs whose gradient is None are skipped (as in Keras)."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not pairs:
            raise ValueError(message("Optimizer.apply_gradients", "no gradients to apply",
                                     "only None gradients", "at least one (gradient, variable)",
                                     "check that the loss depends on the variables"))
        for g, v in pairs:
            if not isinstance(v, Variable):
                raise TypeError(message("Optimizer.apply_gradients", "not a variable",
                                        type(v).__name__, "ap.Variable",
                                        "wrap trainable arrays in ap.Variable"))
            if tuple(jnp.shape(g)) != v.shape:
                raise ValueError(message("Optimizer.apply_gradients",
                                         f"gradient shape differs from {v.name}'s",
                                         list(jnp.shape(g)), list(v.shape),
                                         "pass gradients computed for these variables"))
        variables = [v for _, v in pairs]
        grads = [g if getattr(g, "dtype", None) == v.dtype and isinstance(g, jax.Array)
                 else jnp.asarray(g, v.dtype) for g, v in pairs]
        params = [v.value for v in variables]
        key = tuple(id(v) for v in variables)
        state = self._states.get(key)
        if state is None:
            state = self.transform.init(params)
        new_params, self._states[key] = self._step(grads, state, params)
        for v, p in zip(variables, new_params):
            v._value = p
        self.iterations += 1

    def minimize(self, loss_fn: Any, var_list: list[Variable]) -> Any:
        """Compute the loss under a tape, then apply its gradients; returns the loss."""
        from adplugin.eager.tape import GradientTape

        with GradientTape() as tape:
            loss = loss_fn()
        self.apply_gradients(zip(tape.gradient(loss, var_list), var_list))
        return loss


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False):
        super().__init__(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015)."""

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7):
        super().__init__(optax.adam(learning_rate, b1=beta_1, b2=beta_2, eps=epsilon))


class AdamW(Optimizer):
    """Adam with decoupled weight decay."""

    def __init__(self, learning_rate: float = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(optax.adamw(learning_rate, b1=beta_1, b2=beta_2, eps=epsilon,
                                     weight_decay=weight_decay))


class RMSprop(Optimizer):
    """RMSprop."""

    def __init__(self, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7):
        super().__init__(optax.rmsprop(learning_rate, decay=rho, eps=epsilon,
                                       momentum=momentum or None))


class Adagrad(Optimizer):
    """Adagrad."""

    def __init__(self, learning_rate: float = 0.001, initial_accumulator_value: float = 0.1,
                 epsilon: float = 1e-7):
        super().__init__(optax.adagrad(learning_rate,
                                       initial_accumulator_value=initial_accumulator_value,
                                       eps=epsilon))
