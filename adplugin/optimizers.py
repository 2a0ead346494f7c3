"""`ap.optimizers`: Keras' optimizers over `ap.Variable`s, with Keras' formulas and semantics.

    opt = ap.optimizers.Adam(learning_rate=0.1)
    opt.apply_gradients(zip(grads, variables))

Each variable has its own optimizer state (as Keras' slots), held weakly: a variable that dies
takes its state with it, and a new variable never inherits another's. A `None` gradient skips
that variable only (with a warning, as Keras); `apply_gradients([])` is a no-op; gradients that
are all `None` are an error ("No gradients provided for any variable"). The update of all the
variables given is one jitted step; the learning rate is an input of that step (a number, a
zero-argument callable, or an optax schedule of `iterations`), so changing it never
recompiles. Inside `ap.function` the update compiles into the function's program.

The named optimizers compute what Keras 3 computes, step for step (Adam's epsilon outside the
bias correction, momentum that carries the learning rate, decoupled `weight_decay` before the
update, one of `clipnorm` / `clipvalue` / `global_clipnorm`). Any optax
`GradientTransformation` works through `Optimizer(transform)`, applied to each variable on its
own (the clipping and weight-decay options apply to it too).
"""

from __future__ import annotations

import inspect
import re
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import message
from adplugin.eager.variable import Cell, Variable, plain_value
from adplugin.sharding.mesh import constrain

try:
    import optax
except ImportError as e:  # pragma: no cover - optax is a declared dependency
    raise ImportError("ap.optimizers needs optax: pip install optax") from e

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop"]

LearningRate = float | Callable[..., Any]


class _Slot(Cell):
    """One variable's optimizer state (a pytree of arrays). The state of a sharded variable
    is sharded like it: each array of the variable's shape (moments, accumulators) keeps the
    variable's sharding through every step, eager or in `ap.function`."""

    __slots__ = ("sharding", "_like")

    def __init__(self, value: Any, variable: Variable | None = None):
        self.sharding = None if variable is None else variable.sharding
        self._like = None if variable is None else variable.shape
        if self.sharding is not None:
            value = jax.tree.map(self._put, value)
        super().__init__(value)

    def _put(self, leaf: Any) -> Any:
        if getattr(leaf, "shape", None) != self._like or jx.is_tracer(leaf) or \
                getattr(leaf, "sharding", None) == self.sharding:
            return leaf
        return jax.device_put(leaf, self.sharding)

    def _write(self, value: Any) -> None:
        if self.sharding is not None and jx.at_top_level():
            value = jax.tree.map(self._put, value)
        super()._write(value)

    def constrained(self, value: Any) -> Any:
        """A traced state with the variable-shaped arrays constrained to its sharding."""
        sharding = self.sharding
        if sharding is None:
            return value
        return jax.tree.map(lambda x: constrain(x, sharding)
                            if getattr(x, "shape", None) == self._like else x, value)


def _takes_no_argument(fn: Callable[..., Any]) -> bool:
    """A Keras-style callable learning rate (`lambda: 0.1`), as opposed to a schedule."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                   for p in sig.parameters.values())


def _check_range(op: str, name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(message(op, f"`{name}` must be in [{low}, {high}]", value,
                                 f"a float in [{low}, {high}]", f"pass a valid `{name}`"))


class Optimizer:
    """Applies an update rule to `ap.Variable`s, each with its own state.

    `Optimizer(transform)` takes a ready optax transformation; the named subclasses implement
    Keras' rules from a learning rate (readable and settable as `learning_rate`; an optax
    schedule is evaluated at `iterations`, a zero-argument callable at each step).
    """

    def __init__(self, transform: Any = None, *, learning_rate: LearningRate | None = None,
                 weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None):
        name = type(self).__name__
        if (transform is None) == (learning_rate is None):
            raise TypeError(message(name, "pass an optax transformation, or (the named "
                                    "optimizers) a learning rate", "both or neither", "one",
                                    "ap.optimizers.Optimizer(optax.adam(1e-3)) or Adam(1e-3)"))
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(message(name, "Only one of `clipnorm`, `clipvalue` and "
                                     "`global_clipnorm` can be set", "more than one",
                                     "at most one", "pick one clipping rule"))
        self._transform = transform
        self._learning_rate = learning_rate
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self._excluded_ids: weakref.WeakSet[Variable] = weakref.WeakSet()
        self._excluded_names: list[str] = []
        self._slots: weakref.WeakKeyDictionary[Variable, _Slot] = weakref.WeakKeyDictionary()
        self._iterations = _Slot(jnp.zeros((), jnp.int32))
        # a number is an input of the step (a cell: ap.function sees it change, no recompile)
        self._lr_cell = _Slot(jnp.zeros((), jnp.float32))
        if learning_rate is not None and not callable(learning_rate):
            self._lr_cell._write(jnp.asarray(float(learning_rate), jnp.float32))

    # --- learning rate and iterations -----------------------------------------------------------

    @property
    def iterations(self) -> int:
        """How many steps were applied (Keras' `optimizer.iterations`)."""
        return int(self._iterations._stored)

    @property
    def learning_rate(self) -> float:
        """The current learning rate (a schedule evaluated at `iterations`)."""
        lr = self._learning_rate
        if lr is None:
            raise AttributeError("this optimizer wraps a ready optax transformation: its "
                                 "learning rate is inside it")
        if callable(lr):
            return float(lr() if _takes_no_argument(lr) else lr(self._iterations._stored))
        return float(lr)

    @learning_rate.setter
    def learning_rate(self, value: LearningRate) -> None:
        if self._learning_rate is None:
            raise AttributeError("this optimizer wraps a ready optax transformation: build a "
                                 "new one to change its learning rate")
        self._learning_rate = value if callable(value) else float(value)
        if not callable(value):
            self._lr_cell._write(jnp.asarray(float(value), jnp.float32))

    def _schedule(self) -> Any:
        lr = self._learning_rate
        return lr if callable(lr) and not _takes_no_argument(lr) else None

    def _lr_input(self) -> Any:
        lr = self._learning_rate
        if lr is None or self._schedule() is not None:
            return jnp.zeros((), jnp.float32)  # unused: the step evaluates the schedule
        if callable(lr):
            return jnp.asarray(lr(), jnp.float32)
        return self._lr_cell._read()

    def exclude_from_weight_decay(self, var_list: Iterable[Variable] | None = None,
                                  var_names: Iterable[str] | None = None) -> None:
        """Keep these variables (or those whose name matches one of the patterns) out of
        weight decay (Keras' method)."""
        self._excluded_ids.update(var_list or ())
        self._excluded_names.extend(var_names or ())

    def _decays(self, variables: list[Variable]) -> list[float]:
        wd = self.weight_decay or 0.0
        return [0.0 if v in self._excluded_ids or
                any(re.search(n, v.name) for n in self._excluded_names) else wd
                for v in variables]

    # --- the update rule (the named optimizers override these two) ------------------------------

    def _init_state(self, param: Any) -> Any:
        return self._transform.init(param)

    def _update_one(self, grad: Any, state: Any, param: Any, lr: Any, step: Any
                    ) -> tuple[Any, Any]:
        """The new value of one variable and its new state; `step` is iterations + 1."""
        updates, state = self._transform.update(grad, state, param)
        return optax.apply_updates(param, updates), state

    # --- the step -------------------------------------------------------------------------------

    def _update(self, grads: list[Any], states: list[Any], params: list[Any], lr: Any,
                count: Any, decays: tuple[float, ...], schedule: Any
                ) -> tuple[list[Any], list[Any]]:
        if schedule is not None:
            lr = schedule(count)
        grads = self._clipped(grads)
        new_params, new_states = [], []
        for g, s, p, wd in zip(grads, states, params, decays):
            plr = jnp.asarray(lr, p.dtype)
            p = p - p * (wd * plr).astype(p.dtype)  # decoupled weight decay, before the rule
            p, s = self._update_one(g, s, p, plr, (count + 1).astype(p.dtype))
            new_params.append(p)
            new_states.append(s)
        return new_params, new_states

    def _clipped(self, grads: list[Any]) -> list[Any]:
        if self.clipvalue is not None:
            grads = [jnp.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        if self.clipnorm is not None:
            grads = [_scaled_to_norm(g, jnp.linalg.norm(g), self.clipnorm) for g in grads]
        if self.global_clipnorm is not None:
            norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads))  # the global norm
            grads = [_scaled_to_norm(g, norm, self.global_clipnorm) for g in grads]
        return grads

    def _slot(self, v: Variable) -> _Slot:
        slot = self._slots.get(v)
        if slot is None:  # from the committed value, concretely even inside ap.function's
            with jax.ensure_compile_time_eval():  # trace: no second trace to lift it
                slot = self._slots[v] = _Slot(self._init_state(v._stored), v)
        return slot

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> None:
        """One optimizer step. Pairs whose gradient is None are skipped (that variable only,
        with a warning); no pairs at all is a no-op; only None gradients is an error."""
        given = list(grads_and_vars)
        pairs = [(g, v) for g, v in given if g is not None]
        for g, v in pairs:
            _check_pair(g, v)
        if not given:
            return
        _check_some_gradients(given, pairs)
        variables = [v for _, v in pairs]
        grads = [_gradient_value(g, v) for g, v in pairs]
        slots = [self._slot(v) for v in variables]
        count = self._iterations._read()
        new_params, new_states, new_count = _STEP(
            grads, [s._read() for s in slots], [v.value for v in variables], self._lr_input(),
            count, decays=tuple(self._decays(variables)), rule=_Rule(self),
            schedule=self._schedule())
        for v, p in zip(variables, new_params):
            v._write(p)  # the step keeps each variable's shape and dtype
        for s, st in zip(slots, new_states):
            s._write(st)
        self._iterations._write(new_count)

    def minimize(self, loss: Any, var_list: list[Variable] | None = None, tape: Any = None
                 ) -> Any:
        """Minimize `loss`: a callable (computed under a tape here; returns the loss), or, in a
        graph being built, a loss tensor (returns the update op to run, as TensorFlow 1)."""
        from adplugin.ir.deferred import DeferredTensor
        from adplugin.ir.graph import Tensor

        if isinstance(loss, (Tensor, DeferredTensor)):
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


class _Rule:
    """An optimizer as a static argument of the shared jitted step: equal to another when the
    update rule is the same (class, public hyperparameters, the very optax transformation), so
    optimizers built alike share one compiled step."""

    __slots__ = ("optimizer", "_public")

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self._public = tuple(sorted((k, v) for k, v in vars(optimizer).items()
                                    if not k.startswith("_") and
                                    isinstance(v, (bool, int, float, str, type(None)))))

    def __hash__(self) -> int:
        return hash((type(self.optimizer), self._public))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _Rule) and type(self.optimizer) is type(other.optimizer)
                and self._public == other._public
                and self.optimizer._transform is other.optimizer._transform)


def _step(grads: list[Any], states: list[Any], params: list[Any], lr: Any, count: Any,
          decays: tuple[float, ...], rule: _Rule, schedule: Any
          ) -> tuple[list[Any], list[Any], Any]:
    new_params, new_states = rule.optimizer._update(grads, states, params, lr, count, decays,
                                                    schedule)
    return ([p.astype(q.dtype) for p, q in zip(new_params, params)], new_states, count + 1)


_STEP = jax.jit(_step, static_argnames=("decays", "rule", "schedule"))


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
    g_dtype = getattr(g, "dtype", None)
    if g_dtype is not None and not np.can_cast(np.dtype(g_dtype), v.dtype, "same_kind"):
        raise TypeError(message("Optimizer.apply_gradients",
                                f"the gradient for {v.name} would be truncated to its dtype",
                                np.dtype(g_dtype).name, f"a real gradient that casts to "
                                f"{v.dtype.name}", "pass the gradients computed for these "
                                "variables (a real part with np.real if a complex one is "
                                "meant)"))


def _gradient_value(g: Any, v: Variable) -> Any:
    g = plain_value(g)
    if getattr(g, "dtype", None) == v.dtype:
        return g
    return jnp.asarray(g, v.dtype)


def _scaled_to_norm(g: Any, norm: Any, limit: float) -> Any:
    """g scaled down so that `norm` would be at most `limit` (Keras' clip_by_norm)."""
    return g * jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-12)).astype(g.dtype)


def _check_some_gradients(given: list[tuple[Any, Any]], pairs: list[tuple[Any, Any]]) -> None:
    if not pairs:
        raise ValueError(message(
            "Optimizer.apply_gradients", "No gradients provided for any variable",
            [getattr(v, "name", repr(v)) for _, v in given], "at least one gradient",
            "check that the loss depends on the variables through recorded ap ops (the tape "
            "gives None for each variable it does not depend on)"))
    if len(pairs) < len(given):
        missing = [getattr(v, "name", repr(v)) for g, v in given if g is None]
        warnings.warn(f"Gradients do not exist for variables {missing} when minimizing the "
                      "loss: they are left as they are", stacklevel=3)


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, as Keras: the velocity
    m = momentum * m - lr * g, then w += m (Nesterov: w += momentum * m - lr * g)."""

    def __init__(self, learning_rate: LearningRate = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, **options: Any):
        _check_range("SGD", "momentum", momentum, 0.0, 1.0)
        super().__init__(learning_rate=learning_rate, **options)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _init_state(self, param: Any) -> Any:
        return jnp.zeros_like(param) if self.momentum else ()

    def _update_one(self, grad: Any, state: Any, param: Any, lr: Any, step: Any
                    ) -> tuple[Any, Any]:
        if not self.momentum:
            return param - lr * grad, state
        m = self.momentum * state - lr * grad
        step_by = self.momentum * m - lr * grad if self.nesterov else m
        return param + step_by, m


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) as Keras computes it: m and v moving averages, then
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon); with `amsgrad`, v is the
    running maximum of the v's."""

    def __init__(self, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 **options: Any):
        super().__init__(learning_rate=learning_rate, **options)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad = bool(amsgrad)

    def _init_state(self, param: Any) -> Any:
        zeros = jnp.zeros_like(param)
        return (zeros, zeros, zeros) if self.amsgrad else (zeros, zeros)

    def _update_one(self, grad: Any, state: Any, param: Any, lr: Any, step: Any
                    ) -> tuple[Any, Any]:
        b1, b2 = self.beta_1, self.beta_2
        m = state[0] + (grad - state[0]) * (1 - b1)
        v = state[1] + (jnp.square(grad) - state[1]) * (1 - b2)
        alpha = lr * jnp.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        if self.amsgrad:
            v_hat = jnp.maximum(state[2], v)
            return param - m * alpha / (jnp.sqrt(v_hat) + self.epsilon), (m, v, v_hat)
        return param - m * alpha / (jnp.sqrt(v) + self.epsilon), (m, v)


class AdamW(Adam):
    """Adam with decoupled weight decay (w -= lr * weight_decay * w before each step)."""

    def __init__(self, learning_rate: LearningRate = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, **options: Any):
        if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool):
            raise ValueError(message("AdamW", "Argument `weight_decay` must be a float. "
                                     f"Received: weight_decay={weight_decay}", weight_decay,
                                     "a float", "pass weight_decay=0.004 (say)"))
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay, **options)


class RMSprop(Optimizer):
    """RMSprop as Keras: v = rho * v + (1 - rho) * g^2 (centered: minus the squared moving
    average of g), step = lr * g / sqrt(v + epsilon), through a momentum buffer if any."""

    def __init__(self, learning_rate: LearningRate = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7, centered: bool = False,
                 **options: Any):
        _check_range("RMSprop", "rho", rho, 0.0, 1.0)
        _check_range("RMSprop", "momentum", momentum, 0.0, 1.0)
        if not epsilon > 0:
            raise ValueError(message("RMSprop", "`epsilon` must be positive", epsilon,
                                     "a small positive float", "pass epsilon=1e-7 (say)"))
        super().__init__(learning_rate=learning_rate, **options)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)

    def _init_state(self, param: Any) -> Any:
        zeros = jnp.zeros_like(param)
        return (zeros, zeros if self.momentum else (), zeros if self.centered else ())

    def _update_one(self, grad: Any, state: Any, param: Any, lr: Any, step: Any
                    ) -> tuple[Any, Any]:
        velocity, momentum, average = state
        rho = self.rho
        velocity = rho * velocity + (1 - rho) * jnp.square(grad)
        denominator = velocity
        if self.centered:
            average = rho * average + (1 - rho) * grad
            denominator = velocity - jnp.square(average)
        increment = lr * grad / jnp.sqrt(denominator + self.epsilon)
        if self.momentum:
            momentum = self.momentum * momentum + increment
            increment = momentum
        return param - increment, (velocity, momentum, average)


class Adagrad(Optimizer):
    """Adagrad as Keras: a = a + g^2 (from `initial_accumulator_value`), then
    w -= lr * g / sqrt(a + epsilon)."""

    def __init__(self, learning_rate: LearningRate = 0.001,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 **options: Any):
        super().__init__(learning_rate=learning_rate, **options)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def _init_state(self, param: Any) -> Any:
        return jnp.full_like(param, self.initial_accumulator_value)

    def _update_one(self, grad: Any, state: Any, param: Any, lr: Any, step: Any
                    ) -> tuple[Any, Any]:
        accumulator = state + jnp.square(grad)
        return param - lr * grad / jnp.sqrt(accumulator + self.epsilon), accumulator
