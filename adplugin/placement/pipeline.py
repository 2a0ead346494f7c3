"""Pipeline parallelism: a model split into stages on devices, trained with microbatches.

`Pipeline(stages, loss_fn, microbatches=m, schedule="gpipe" | "1f1b" | Schedule,
devices=...)` runs a checked static `Schedule` (see `schedule.py`): stage s is a JAX-traceable
function `stage(params_s, x) -> y` (ap.* ops or jnp) whose parameters live on `devices[s]`. The
batch is cut into m equal microbatches along its leading axis; per action of the table:

- `F i` on stage s: a jitted `jax.vjp` of the stage on its device, keeping the residuals (the
  VJP closure is a pytree, passed on to the backward) or, with `remat=True`, only the stage's
  input (the backward recomputes the forward). The last stage also applies `loss_fn` to the
  microbatch's targets. The output goes to stage s+1 with `jax.device_put` (a transfer).
- `B i` on stage s: the jitted pullback of that VJP at the cotangent from stage s+1 (on the
  last stage, the seed 1/m for a mean of microbatch losses, 1 for a sum), accumulated into the
  stage's gradient; the input cotangent goes to stage s-1 with `jax.device_put`.

Actions are issued in table order without blocking (JAX dispatch is asynchronous), so stages
on different devices overlap; the checked table guarantees every input exists when its action
is issued. Each stage's forward and backward compile once per input shape (jitted functions
owned by the pipeline). The loss and gradients equal `jax.value_and_grad` of the unsplit model
on the full batch (up to float rounding: the sums are grouped by microbatch):

    loss(params) = mean_i loss_fn(stage_{p-1}(... stage_0(params_0, x_i)), y_i)   (or the sum)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from adplugin._errors import AdpluginError
from adplugin._lru import LRU
from adplugin.placement.schedule import Schedule, make_schedule

StageFn = Callable[[Any, Any], Any]
LossFn = Callable[[Any, Any], Any]


class PipelineError(AdpluginError, ValueError):
    """A pipeline got inputs it cannot run: names what was given, what was expected, the fix."""


def _error(problem: str, given: object, expected: object, fix: str) -> PipelineError:
    return PipelineError(f"ap.Pipeline: {problem}. Given: {given}. Expected: {expected}. "
                         f"Fix: {fix}")


@dataclass(frozen=True)
class PipelineResult:
    """One training step's results: the loss (on the last stage's device), the gradient of
    every stage's parameters (each on its stage's device), and what moved between stages."""

    loss: Any
    grads: list[Any]
    transfers: int
    cross_device_transfers: int
    actions: int


class Pipeline:
    """Stages on devices, run with microbatches under a static schedule.

    stages: `stage(params_s, x) -> y`, JAX-traceable; stage s+1 takes what stage s returns
      (an array or a pytree of inexact arrays).
    loss_fn: `loss_fn(y, targets) -> scalar` on the last stage's output and a microbatch's
      targets.
    microbatches: m, the number of equal slices of the batch's leading axis.
    schedule: 'gpipe', '1f1b' or a `Schedule` of len(stages) stages and m microbatches.
    devices: one device per stage, or one device for all; None spreads the stages over
      `jax.devices()` in contiguous blocks (all on one device when there is one).
    loss_reduction: 'mean' (the step's loss is the mean of the microbatch losses: matches a
      loss_fn that averages over examples) or 'sum'.
    remat: recompute each stage's forward in its backward instead of keeping its residuals.
    """

    def __init__(self, stages: Sequence[StageFn], loss_fn: LossFn, *, microbatches: int,
                 schedule: str | Schedule = "gpipe", devices: Any = None,
                 loss_reduction: Literal["mean", "sum"] = "mean", remat: bool = False):
        self.stages = list(stages)
        p = len(self.stages)
        if p < 1 or not all(callable(f) for f in self.stages):
            raise _error("stages must be a non-empty sequence of functions", stages,
                         "[stage(params, x) -> y, ...]", "pass one function per stage")
        if not callable(loss_fn):
            raise _error("loss_fn is not callable", loss_fn, "loss_fn(y, targets) -> scalar",
                         "pass a function of the last stage's output and the targets")
        if not isinstance(microbatches, int) or isinstance(microbatches, bool) \
                or microbatches < 1:
            raise _error("microbatches must be a positive int", microbatches, "m >= 1",
                         "pass microbatches=m, a divisor of the batch size")
        if loss_reduction not in ("mean", "sum"):
            raise _error("unknown loss_reduction", repr(loss_reduction), "'mean' or 'sum'",
                         "pass loss_reduction='mean' for a loss_fn that averages")
        self.loss_fn = loss_fn
        self.num_stages = p
        self.microbatches = microbatches
        self.loss_reduction = loss_reduction
        self.remat = remat
        self.schedule = self._schedule(schedule)
        self.devices = self._devices(devices)
        self._programs = [_program(f, loss_fn, first=s == 0, last=s == p - 1, remat=remat)
                          for s, f in enumerate(self.stages)]

    def _schedule(self, schedule: str | Schedule) -> Schedule:
        p, m = self.num_stages, self.microbatches
        if isinstance(schedule, str):
            return make_schedule(schedule, p, m)
        if not isinstance(schedule, Schedule):
            raise _error("schedule is neither a name nor a Schedule", schedule,
                         "'gpipe', '1f1b' or ap.gpipe(p, m) / ap.one_f_one_b(p, m)",
                         "pass schedule='gpipe'")
        if (schedule.num_stages, schedule.num_microbatches) != (p, m):
            raise _error("the schedule does not fit the pipeline",
                         f"a schedule of {schedule.num_stages} stages and "
                         f"{schedule.num_microbatches} microbatches",
                         f"{p} stages (one per stage function) and {m} microbatches",
                         f"build the schedule for ({p}, {m})")
        schedule.check()  # again: the table is proved runnable right before it is used
        return schedule

    def _devices(self, devices: Any) -> list[Any]:
        p = self.num_stages
        if devices is None:
            avail = jax.devices()
            n = len(avail)
            # contiguous blocks: stage s on device floor(s*n/p) when there are fewer than p
            return [avail[s] if n >= p else avail[s * n // p] for s in range(p)]
        if isinstance(devices, jax.Device):
            return [devices] * p
        devices = list(devices)
        if len(devices) == 1:
            return devices * p
        if len(devices) != p or not all(isinstance(d, jax.Device) for d in devices):
            raise _error("devices must give one device per stage", devices,
                         f"{p} jax devices (or one device for all stages)",
                         "pass devices=[jax.devices()[s] for s in range(p)] or one device")
        return devices

    # --- placement ----------------------------------------------------------------------------

    def place(self, params: Sequence[Any]) -> list[Any]:
        """Every stage's parameters on its stage's device (`jax.device_put`)."""
        self._check_params(params)
        return [jax.device_put(ps, d) for ps, d in zip(params, self.devices)]

    def _check_params(self, params: Sequence[Any]) -> None:
        if not isinstance(params, (list, tuple)) or len(params) != self.num_stages:
            given = f"{len(params)} entries" if isinstance(params, (list, tuple)) else \
                type(params).__name__
            raise _error("params must hold one pytree per stage", given,
                         f"a list of {self.num_stages} parameter pytrees",
                         "pass [params_0, ..., params_{p-1}] in stage order")

    @staticmethod
    def _rows(what: str, tree: Any) -> int:
        """The leading (batch) axis every leaf of `tree` shares."""
        leaves = jax.tree.leaves(tree)
        sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in leaves}
        if not leaves or -1 in sizes or len(sizes) != 1:
            raise _error(f"every leaf of {what} needs the same leading (batch) axis",
                         [np.shape(a) for a in leaves], "arrays of shape (n, ...) with one n",
                         f"stack the examples of {what} along axis 0")
        return sizes.pop()

    def _microbatches(self, what: str, tree: Any, device: Any) -> list[Any]:
        """Cut every leaf's leading axis into m equal slices, each put on `device`."""
        m, n = self.microbatches, self._rows(what, tree)
        if n % m:
            raise _error(f"{what} of {n} rows does not split into {m} equal microbatches", n,
                         f"a multiple of microbatches={m}",
                         f"drop {n % m} rows or pick microbatches dividing {n}")
        b = n // m
        return [jax.device_put(jax.tree.map(lambda a, lo=i * b: a[lo:lo + b], tree), device)
                for i in range(m)]

    # --- running the table --------------------------------------------------------------------

    def run(self, params: Sequence[Any], batch: Any, targets: Any) -> PipelineResult:
        """One forward and backward pass of the whole batch under the schedule."""
        self._check_params(params)
        p, m, devs = self.num_stages, self.microbatches, self.devices
        params = [jax.device_put(ps, d) for ps, d in zip(params, devs)]
        n_x, n_t = self._rows("batch", batch), self._rows("targets", targets)
        if n_x != n_t:
            raise _error("batch and targets differ in their number of rows",
                         f"{n_x} rows of batch, {n_t} of targets", "one target per example",
                         "pass targets with the batch's leading axis")
        acts: dict[tuple[int, int], Any] = dict(
            ((0, i), x) for i, x in enumerate(self._microbatches("batch", batch, devs[0])))
        tgts = self._microbatches("targets", targets, devs[-1])
        residuals: dict[tuple[int, int], Any] = {}
        cts: dict[tuple[int, int], Any] = {}
        losses: list[Any] = [None] * m
        grads = [prog.zeros(ps) for prog, ps in zip(self._programs, params)]
        seed: Any = None
        transfers = cross = actions = 0
        for row in self.schedule.table:
            for s, a in enumerate(row):
                if a is None:
                    continue
                i, prog, actions = a.microbatch, self._programs[s], actions + 1
                if a.kind == "F":
                    x = acts.pop((s, i))
                    if s == p - 1:
                        losses[i], residuals[(s, i)] = prog.forward(params[s], x, tgts[i])
                        _check_loss(losses[i])
                        continue
                    y, residuals[(s, i)] = prog.forward(params[s], x, None)
                    _check_activation(s, y)
                    acts[(s + 1, i)] = jax.device_put(y, devs[s + 1])
                    transfers, cross = transfers + 1, cross + (devs[s + 1] != devs[s])
                    continue
                if s == p - 1:
                    if seed is None:  # d(step loss)/d(microbatch loss)
                        scale = 1.0 / m if self.loss_reduction == "mean" else 1.0
                        seed = jax.device_put(np.asarray(scale, losses[i].dtype), devs[s])
                    ct = seed
                else:
                    ct = cts.pop((s, i))
                grads[s], gx = prog.backward(residuals.pop((s, i)), ct, grads[s])
                if s > 0:
                    cts[(s - 1, i)] = jax.device_put(gx, devs[s - 1])
                    transfers, cross = transfers + 1, cross + (devs[s - 1] != devs[s])
        loss = jnp.sum(jnp.stack(losses))
        if self.loss_reduction == "mean":
            loss = loss / m
        return PipelineResult(loss, grads, transfers, cross, actions)

    def value_and_grad(self, params: Sequence[Any], batch: Any,
                       targets: Any) -> tuple[Any, list[Any]]:
        """(loss, [grad of params_s for each stage s]), as `jax.value_and_grad` of the unsplit
        model over the full batch would give."""
        r = self.run(params, batch, targets)
        return r.loss, r.grads

    def forward(self, params: Sequence[Any], batch: Any) -> Any:
        """The last stage's output for the whole batch (microbatched, forwards only, in the
        GPipe order), concatenated along axis 0 on the last stage's device."""
        self._check_params(params)
        devs = self.devices
        params = [jax.device_put(ps, d) for ps, d in zip(params, devs)]
        outs = []
        for x in self._microbatches("batch", batch, devs[0]):
            for s, prog in enumerate(self._programs):
                x = prog.apply(params[s], x)
                if s + 1 < self.num_stages:
                    x = jax.device_put(x, devs[s + 1])
            outs.append(x)
        return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=0), *outs)

    def unsplit(self) -> Callable[[Sequence[Any], Any], Any]:
        """The model as one function `model(params, x)` (the stages composed)."""
        stages = self.stages

        def model(params: Sequence[Any], x: Any) -> Any:
            for f, ps in zip(stages, params):
                x = f(ps, x)
            return x
        return model

    def __repr__(self) -> str:
        where = ", ".join(f"{s}:{d}" for s, d in enumerate(self.devices))
        return (f"Pipeline({self.num_stages} stages, {self.microbatches} microbatches, "
                f"schedule={self.schedule.name!r}, devices=[{where}])")


def _program(stage: StageFn, loss_fn: LossFn, *, first: bool, last: bool,
             remat: bool) -> _StageProgram:
    """A stage's programs, shared by every pipeline that runs the same stage in the same role
    (keyed by the functions themselves, which the bounded cache keeps alive)."""
    key = (stage, loss_fn if last else None, first, last, remat)
    return _PROGRAMS.get_or_build(
        key, lambda: _StageProgram(stage, loss_fn, first=first, last=last, remat=remat))


class _StageProgram:
    """One stage's jitted programs: forward (keeping the VJP or the input) and backward (the
    pullback, accumulated into the gradient). Each compiles once per input shape."""

    def __init__(self, stage: StageFn, loss_fn: LossFn, *, first: bool, last: bool,
                 remat: bool):
        def f(params: Any, x: Any, t: Any) -> Any:
            y = stage(params, x)
            return loss_fn(y, t) if last else y

        # the first stage's input is data: no cotangent for it (it may be integer ids)
        def vjp(params: Any, x: Any, t: Any) -> tuple[Any, Any]:
            if first:
                return jax.vjp(lambda ps: f(ps, x, t), params)
            return jax.vjp(lambda ps, xs: f(ps, xs, t), params, x)

        def pull(res: Any, ct: Any) -> tuple[Any, Any]:
            if remat:
                _, back = vjp(*res)
            else:
                back = res
            cts = back(ct)
            return cts[0], (None if first else cts[1])

        def backward(res: Any, ct: Any, acc: Any) -> tuple[Any, Any]:
            g, gx = pull(res, ct)
            return jax.tree.map(jnp.add, acc, g), gx

        self.backward = jax.jit(backward)
        # the gradient sum starts at zero on the stage's device (one backward program for all
        # microbatches)
        self.zeros = jax.jit(lambda ps: jax.tree.map(jnp.zeros_like, ps))
        self.apply = jax.jit(stage)
        if remat:  # keep only the inputs; the backward runs the forward again
            plain = jax.jit(f)
            self.forward = lambda ps, x, t: (plain(ps, x, t), (ps, x, t))
        else:
            self.forward = jax.jit(vjp)


_PROGRAMS: LRU[_StageProgram] = LRU(256)


def _check_loss(loss: Any) -> None:
    if np.shape(loss) != () or not jnp.issubdtype(loss.dtype, jnp.inexact):
        raise _error("loss_fn must return a real scalar",
                     f"shape {np.shape(loss)}, dtype {loss.dtype}", "shape (), a float dtype",
                     "reduce the loss with a mean or sum over the microbatch")


def _check_activation(stage: int, y: Any) -> None:
    bad = [a.dtype for a in jax.tree.leaves(y) if not jnp.issubdtype(a.dtype, jnp.inexact)]
    if bad:
        raise _error(f"stage {stage} returned a non-float activation, which has no cotangent",
                     f"dtypes {bad}", "float arrays passed between stages",
                     f"cast stage {stage}'s output to a float dtype, or move the integer work "
                     "into the first stage")
