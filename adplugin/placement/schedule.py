"""Pipeline schedules as static tables, checked before anything runs.

A schedule of `p` stages and `m` microbatches is a table: one row per time step, one column
per stage, each cell an action (`F i`: forward of microbatch i, `B i`: its backward) or idle.
Every action takes one time step (the classic unit-cost model: a forward and a backward cost
the same), and the runtime (`pipeline.Pipeline`) issues the rows in order.

`check()` proves the table runnable before it runs: each action exactly once; on every stage
F i before B i; F i on stage s after F i on stage s-1 (the activation arrives by a transfer);
B i on stage s after B i on stage s+1 (the cotangent arrives by a transfer); and at most
`in_flight_limit[s]` microbatches whose forward ran and backward did not on stage s. Every
dependency lies in an earlier row, so issuing the rows in order can never wait on an action
not yet issued: no deadlock by construction.

Two builders, after GPipe (Huang et al. 2019) and 1F1B (PipeDream-Flush, Narayanan et al.
2021), both placed by `from_orders`, which turns per-stage program orders into the earliest
time table (each action one step after the later of its stage's previous action and its
dependency):

- `gpipe(p, m)`: each stage runs all m forwards, then all m backwards; m activations live
  on every stage at the peak.
- `one_f_one_b(p, m)`: stage s runs min(p-s-1, m) forwards (warm-up), then alternates one
  forward and one backward, then drains the backwards; at most p-s activations live on stage s.

Both take 2(m+p-1) steps, so their bubble (idle cells / all cells) is (p-1)/(m+p-1); 1F1B
saves memory, not time. A training step moves 2(p-1)m tensors between stages: each
microbatch's activation forward and its cotangent backward across each of the p-1 links.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from adplugin._errors import AdpluginError

Kind = Literal["F", "B"]


class ScheduleError(AdpluginError, ValueError):
    """A pipeline schedule breaks a rule: names the step, the stage, the rule and the fix."""


@dataclass(frozen=True)
class Action:
    """`F i` (forward of microbatch i) or `B i` (its backward) on one stage."""

    kind: Kind
    microbatch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}"


@dataclass(frozen=True)
class PipelineTransfer:
    """A tensor moved between stages at the end of `step`: an activation (after F, to s+1) or
    a cotangent (after B, to s-1)."""

    step: int
    kind: Literal["activation", "cotangent"]
    microbatch: int
    src: int
    dst: int


Cell = Action | None


def F(i: int) -> Action:
    """The forward of microbatch i."""
    return Action("F", i)


def B(i: int) -> Action:
    """The backward of microbatch i."""
    return Action("B", i)


def _rule_error(name: str, step: int, stage: int, rule: str, fix: str) -> ScheduleError:
    return ScheduleError(f"schedule {name!r}: step {step}, stage {stage}: {rule}. Fix: {fix}")


@dataclass(frozen=True)
class Schedule:
    """A static pipeline table: `table[t][s]` is stage s's action at step t, or None (idle).

    `in_flight_limit[s]`, when given, bounds the microbatches live on stage s (forward done,
    backward not yet). Construction checks the table (`check()`), so a `Schedule` object is
    always runnable.
    """

    name: str
    num_stages: int
    num_microbatches: int
    table: tuple[tuple[Cell, ...], ...]
    in_flight_limit: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", tuple(tuple(row) for row in self.table))
        if self.in_flight_limit is not None:
            object.__setattr__(self, "in_flight_limit", tuple(self.in_flight_limit))
        self.check()

    # --- the checker ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise `ScheduleError` naming the first step, stage and rule the table breaks."""
        p, m, name = self.num_stages, self.num_microbatches, self.name
        if p < 1 or m < 1:
            raise ScheduleError(f"schedule {name!r}: {p} stages and {m} microbatches given; "
                                "expected at least 1 of each. Fix: pass p >= 1 and m >= 1")
        if self.in_flight_limit is not None and len(self.in_flight_limit) != p:
            raise ScheduleError(
                f"schedule {name!r}: in_flight_limit has {len(self.in_flight_limit)} entries for "
                f"{p} stages; expected one per stage. Fix: pass a limit for every stage")
        done: dict[tuple[str, int, int], int] = {}  # (kind, microbatch, stage) -> step
        live = [0] * p
        for t, row in enumerate(self.table):
            if len(row) != p:
                raise _rule_error(name, t, len(row), f"the row has {len(row)} cells for {p} "
                                  "stages (rule: one cell per stage)", "give every row p cells "
                                  "(None for idle)")
            for s, a in enumerate(row):
                if a is None:
                    continue
                if not isinstance(a, Action) or a.kind not in ("F", "B"):
                    raise _rule_error(name, t, s, f"cell {a!r} is not an action (rule: F(i), "
                                      "B(i) or None)", "build cells with F(i) / B(i)")
                i = a.microbatch
                if not 0 <= i < m:
                    raise _rule_error(name, t, s, f"{a} names microbatch {i}, outside "
                                      f"[0, {m}) (rule: microbatches 0..m-1)",
                                      "number the microbatches from 0")
                key = (a.kind, i, s)
                if key in done:
                    raise _rule_error(name, t, s, f"{a} already ran at step {done[key]} "
                                      "(rule: each action exactly once)", "remove the repeat")
                self._check_dependencies(t, s, a, done)
            # actions of one row run concurrently: their effects count from the next row on
            for s, a in enumerate(row):
                if a is not None:
                    done[(a.kind, a.microbatch, s)] = t
                    live[s] += 1 if a.kind == "F" else -1
            if self.in_flight_limit is not None:
                for s, (n, limit) in enumerate(zip(live, self.in_flight_limit)):
                    if n > limit:
                        raise _rule_error(
                            name, t, s, f"{n} microbatches are in flight (forward done, backward "
                            f"not) where at most {limit} may be (rule: in-flight limit)",
                            "run a backward before the next forward on this stage")
        for s in range(p):
            for kind in ("F", "B"):
                for i in range(m):
                    if (kind, i, s) not in done:
                        raise _rule_error(name, len(self.table), s, f"{kind}{i} never runs "
                                          "(rule: each action exactly once)",
                                          f"add {kind}{i} to stage {s}")

    def _check_dependencies(self, t: int, s: int, a: Action,
                            done: dict[tuple[str, int, int], int]) -> None:
        i, p, name = a.microbatch, self.num_stages, self.name
        if a.kind == "F" and s > 0 and ("F", i, s - 1) not in done:
            raise _rule_error(name, t, s, f"F{i} runs before F{i} on stage {s - 1} (rule: a "
                              "forward needs the activation of the stage before, from an "
                              "earlier step)", f"move F{i} on stage {s} after F{i} on stage "
                              f"{s - 1}")
        if a.kind == "B":
            if ("F", i, s) not in done:
                raise _rule_error(name, t, s, f"B{i} runs before F{i} on the same stage (rule: "
                                  "a forward precedes its backward)", f"run F{i} on stage {s} "
                                  "first")
            if s < p - 1 and ("B", i, s + 1) not in done:
                raise _rule_error(name, t, s, f"B{i} runs before B{i} on stage {s + 1} (rule: a "
                                  "backward needs the cotangent of the stage after, from an "
                                  "earlier step)", f"move B{i} on stage {s} after B{i} on stage "
                                  f"{s + 1}")

    # --- what the table says ----------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return len(self.table)

    @property
    def bubble(self) -> Fraction:
        """Idle cells over all cells, exactly."""
        cells = self.num_steps * self.num_stages
        return Fraction(cells - 2 * self.num_stages * self.num_microbatches, cells)

    @property
    def bubble_fraction(self) -> float:
        return float(self.bubble)

    def actions(self, stage: int) -> list[tuple[int, Action]]:
        """Stage `stage`'s (step, action) pairs in time order."""
        return [(t, a) for t, row in enumerate(self.table) if (a := row[stage]) is not None]

    def transfers(self) -> list[PipelineTransfer]:
        """Every tensor moved between stages: 2(p-1)m of them."""
        out: list[PipelineTransfer] = []
        last = self.num_stages - 1
        for t, row in enumerate(self.table):
            for s, a in enumerate(row):
                if a is not None and a.kind == "F" and s < last:
                    out.append(PipelineTransfer(t, "activation", a.microbatch, s, s + 1))
                elif a is not None and a.kind == "B" and s > 0:
                    out.append(PipelineTransfer(t, "cotangent", a.microbatch, s, s - 1))
        return out

    @property
    def num_transfers(self) -> int:
        return len(self.transfers())

    def peak_in_flight(self) -> list[int]:
        """The most microbatches live at once (forward done, backward not) on each stage."""
        peaks = []
        for s in range(self.num_stages):
            n = peak = 0
            for _, a in self.actions(s):
                n += 1 if a.kind == "F" else -1
                peak = max(peak, n)
            peaks.append(peak)
        return peaks

    def timeline(self) -> str:
        """A text grid: a row per stage, a column per step, '.' for idle; then the bubble."""
        width = max(len(str(self.num_steps - 1)), len(f"F{self.num_microbatches - 1}"))
        label = max(len(f"stage {self.num_stages - 1}"), len("step"))
        lines = [f"{'step':<{label}} " + " ".join(f"{t:>{width}}"
                                                 for t in range(self.num_steps))]
        for s in range(self.num_stages):
            cells = (str(row[s]) if row[s] is not None else "." for row in self.table)
            lines.append(f"{f'stage {s}':<{label}} " + " ".join(f"{c:>{width}}" for c in cells))
        b = self.bubble
        lines.append(f"{self.name}: {self.num_stages} stages, {self.num_microbatches} "
                     f"microbatches, {self.num_steps} steps, bubble {b.numerator}/"
                     f"{b.denominator} = {float(b):.1%}, {self.num_transfers} transfers")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.timeline()

    # --- building -----------------------------------------------------------------------------

    @classmethod
    def from_orders(cls, name: str, orders: Sequence[Iterable[Action]], num_microbatches: int,
                    in_flight_limit: Sequence[int] | None = None) -> Schedule:
        """The earliest-time table for per-stage program orders (`orders[s]`: stage s's actions
        in the order it runs them); each action goes one step after the later of its stage's
        previous action and the action it depends on. Raises `ScheduleError` if the orders
        wait on each other in a cycle (a deadlock)."""
        p = len(orders)
        queues = [list(o) for o in orders]
        pos = [0] * p
        finished: dict[tuple[str, int, int], int] = {}  # (kind, microbatch, stage) -> step
        rows: list[list[Cell]] = []
        free_at = [0] * p  # the first step each stage is free

        def dep(s: int, a: Action) -> tuple[str, int, int] | None:
            if a.kind == "F":
                return ("F", a.microbatch, s - 1) if s > 0 else None
            return ("B", a.microbatch, s + 1) if s < p - 1 else ("F", a.microbatch, s)

        while any(pos[s] < len(queues[s]) for s in range(p)):
            progressed = False
            for s in range(p):
                while pos[s] < len(queues[s]):
                    a = queues[s][pos[s]]
                    d = dep(s, a)
                    if d is not None and d not in finished:
                        break  # wait for another stage
                    t = max(free_at[s], finished[d] + 1 if d is not None else 0)
                    while len(rows) <= t:
                        rows.append([None] * p)
                    rows[t][s] = a
                    finished[(a.kind, a.microbatch, s)] = t
                    free_at[s] = t + 1
                    pos[s] += 1
                    progressed = True
            if not progressed:
                waiting = {s: str(queues[s][pos[s]]) for s in range(p) if pos[s] < len(queues[s])}
                s0 = min(waiting)
                raise _rule_error(
                    name, len(rows), s0, f"the stage orders deadlock: every stage waits on "
                    f"another (next actions {waiting}) (rule: no cyclic waits)",
                    "order each stage's actions so that every dependency can run first")
        return cls(name, p, num_microbatches, tuple(tuple(r) for r in rows),
                   tuple(in_flight_limit) if in_flight_limit is not None else None)


def _check_sizes(builder: str, p: int, m: int) -> None:
    for what, v in (("p (stages)", p), ("m (microbatches)", m)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ScheduleError(f"ap.{builder}: {what} = {v!r}; expected an int >= 1. Fix: "
                                "pass positive integers, e.g. "
                                f"ap.{builder}(4, 8)")


def gpipe(p: int, m: int) -> Schedule:
    """GPipe: every stage runs F0..F(m-1), then B0..B(m-1)."""
    _check_sizes("gpipe", p, m)
    orders = [[F(i) for i in range(m)] + [B(i) for i in range(m)] for _ in range(p)]
    return Schedule.from_orders("gpipe", orders, m, in_flight_limit=[m] * p)


def one_f_one_b(p: int, m: int) -> Schedule:
    """1F1B: stage s warms up with min(p-s-1, m) forwards, alternates F and B, then drains;
    at most p-s microbatches are in flight on stage s."""
    _check_sizes("one_f_one_b", p, m)
    orders = []
    for s in range(p):
        warm = min(p - s - 1, m)
        order = [F(i) for i in range(warm)]
        for i in range(m - warm):
            order += [F(warm + i), B(i)]
        order += [B(i) for i in range(m - warm, m)]
        orders.append(order)
    return Schedule.from_orders("1f1b", orders, m,
                                in_flight_limit=[min(p - s, m) for s in range(p)])


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "onefoneb": one_f_one_b}


def make_schedule(name: str, p: int, m: int) -> Schedule:
    """`gpipe(p, m)` or `one_f_one_b(p, m)` by name ('gpipe', '1f1b')."""
    try:
        builder = SCHEDULES[name.lower().replace("_", "")]
    except KeyError:
        raise ScheduleError(f"unknown pipeline schedule {name!r}; expected one of "
                            f"{sorted(SCHEDULES)}. Fix: pass schedule='gpipe' or '1f1b', or a "
                            "Schedule") from None
    return builder(p, m)
