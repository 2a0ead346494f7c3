"""`ap.compare_collectives(predicted, measured)`: predicted collectives against XLA's.

A prediction is a row (kind, mesh axes, bytes, node name). Rows match a measured collective
of the same kind over the same set of axes; a prediction whose node's name scope appears in a
measured row's op_name goes to that row first. XLA's combiners merge several collectives into
one (one all-reduce of a tuple), so several predictions may share a measured row: their bytes
are summed and must agree with the measured bytes within `bytes_rtol`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adplugin._errors import message
from adplugin._table import columns
from adplugin.sharding.collectives import KINDS, Collective, Collectives, CollectivesError


@dataclass(frozen=True)
class PredictedCollective:
    """A collective some analysis expects: kind, mesh axes, bytes (same convention as the
    measured table: see `adplugin.sharding.collectives`), and the node it comes from."""

    kind: str
    axes: tuple[str, ...]
    nbytes: int
    node: str | None = None

    @staticmethod
    def of(row: Any) -> PredictedCollective:
        if isinstance(row, PredictedCollective):
            p = row
        elif isinstance(row, Mapping):
            nbytes = row.get("nbytes", row.get("bytes"))
            p = PredictedCollective(row.get("kind", ""), row.get("axes", ()),
                                    nbytes if nbytes is not None else -1, row.get("node"))
        else:
            raise CollectivesError(message(
                "compare_collectives", "a predicted row is neither a PredictedCollective nor a "
                "mapping", repr(row), "PredictedCollective(kind, axes, nbytes, node) or "
                "{'kind':..., 'axes':..., 'nbytes':..., 'node':...}", "build rows of that form"))
        kind = p.kind.replace("_", "-")
        axes = (p.axes,) if isinstance(p.axes, str) else tuple(p.axes)
        if kind not in KINDS or int(p.nbytes) < 0:
            raise CollectivesError(message(
                "compare_collectives", "a predicted row has an unknown kind or no bytes",
                repr(row), f"kind in {KINDS} and nbytes >= 0", "fix the predicted row"))
        return PredictedCollective(kind, axes, int(p.nbytes), p.node)


@dataclass(frozen=True)
class Match:
    """A measured collective and the predictions it accounts for."""

    measured: Collective
    predicted: tuple[PredictedCollective, ...]

    @property
    def predicted_bytes(self) -> int:
        return sum(p.nbytes for p in self.predicted)


@dataclass(frozen=True)
class CollectiveCheck:
    """The comparison: `matched`, `mismatched` (bytes differ beyond rtol), `missing`
    (predicted, not in XLA), `unexpected` (in XLA, not predicted), and `unattributed`
    (measured rows whose op_name names no predicted node: informational)."""

    matched: tuple[Match, ...]
    mismatched: tuple[Match, ...]
    missing: tuple[PredictedCollective, ...]
    unexpected: tuple[Collective, ...]
    unattributed: tuple[Collective, ...]
    bytes_rtol: float

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def table(self) -> str:
        head = ("status", "kind", "axes", "predicted", "measured", "node", "op_name")
        lines: list[tuple[str, ...]] = [head]
        for status, matches in (("matched", self.matched), ("MISMATCH", self.mismatched)):
            for m in matches:
                nodes = dict.fromkeys(p.node or "?" for p in m.predicted)
                lines.append((status, m.measured.kind, _axes(m.measured.axes),
                              str(m.predicted_bytes), str(m.measured.nbytes), ",".join(nodes),
                              _op_names(m.measured)))
        for p in self.missing:
            lines.append(("MISSING", p.kind, _axes(p.axes), str(p.nbytes), "-", p.node or "?",
                          ""))
        for r in self.unexpected:
            lines.append(("UNEXPECTED", r.kind, _axes(r.axes), "-", str(r.nbytes), "-",
                          _op_names(r)))
        out = columns(lines, right=(3, 4))
        out.append(f"{'ok' if self.ok else 'NOT ok'}: {len(self.matched)} matched, "
                   f"{len(self.mismatched)} mismatched, {len(self.missing)} missing, "
                   f"{len(self.unexpected)} unexpected, {len(self.unattributed)} unattributed "
                   f"(bytes_rtol={self.bytes_rtol})")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _op_names(r: Collective) -> str:
    names = r.op_names
    return (names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")) if names else ""


def _axes(axes: tuple[str, ...] | None) -> str:
    return "?" if axes is None else (",".join(axes) or "-")


def mentions(op_name: str, node: str) -> bool:
    """Whether `node` is a name scope of `op_name`: 'jit(f)/transpose(jvp(dense))/dot' has
    'dense' (scopes are delimited by '/' and by the parentheses of transforms)."""
    return re.search(r"(?:^|[/(])" + re.escape(node) + r"(?=$|[/)])", op_name) is not None


def bytes_agree(predicted: int, measured: int, rtol: float) -> bool:
    """Predicted bytes within `rtol` of the measured bytes (relative to the measured)."""
    return abs(predicted - measured) <= rtol * measured


def compare_collectives(predicted: Iterable[Any], measured: Collectives | Iterable[Collective],
                        bytes_rtol: float = 0.1) -> CollectiveCheck:
    """Match predicted collectives against the measured table (`ap.collectives(...)`).

    Predictions match measured rows of the same kind and set of mesh axes: first those whose
    op_name carries the prediction's node, then any other (XLA may drop metadata), best byte
    fit first. Several predictions may fill one combined measured row.
    """
    preds = [PredictedCollective.of(p) for p in predicted]
    rows = list(measured)
    if any(r.axes is None for r in rows):
        raise CollectivesError(message(
            "compare_collectives", "measured rows carry no mesh axes",
            [r.name for r in rows if r.axes is None][:5],
            "a table built with the program's mesh",
            "call ap.collectives(compiled, mesh=mesh); rows shown with axes '?' span no whole "
            "mesh axes"))
    nodes = {p.node for p in preds if p.node}
    named = [{n for n in nodes if any(mentions(o, n) for o in r.op_names)} for r in rows]
    assigned: list[list[PredictedCollective]] = [[] for _ in rows]
    tol = 1.0 + bytes_rtol

    def same(p: PredictedCollective, i: int) -> bool:
        r = rows[i]
        return r.kind == p.kind and set(r.axes or ()) == set(p.axes)

    def room(i: int) -> float:
        return rows[i].nbytes * tol - sum(q.nbytes for q in assigned[i])

    def named_rows(p: PredictedCollective) -> list[int]:
        return [i for i in range(len(rows)) if p.node in named[i] and same(p, i)]

    deferred = []
    for p in preds:                          # 1. rows naming the prediction's node
        fits = [i for i in named_rows(p) if room(i) >= p.nbytes]
        if fits:
            assigned[fits[0]].append(p)
        else:
            deferred.append(p)
    missing = []
    for p in sorted(deferred, key=lambda q: -q.nbytes):  # 2. by kind, axes and bytes
        cands = [i for i in range(len(rows)) if same(p, i) and room(i) >= p.nbytes
                 and (not named[i] or p.node in named[i])]
        empty = [i for i in cands if not assigned[i]
                 and bytes_agree(p.nbytes, rows[i].nbytes, bytes_rtol)]
        own = named_rows(p)                  # 3. its node's row, though the bytes overflow
        if empty or cands or own:
            assigned[(empty or sorted(cands, key=room) or own)[0]].append(p)
        else:
            missing.append(p)
    matched: list[Match] = []
    mismatched: list[Match] = []
    unexpected: list[Collective] = []
    for i, r in enumerate(rows):
        if not assigned[i]:
            unexpected.append(r)
            continue
        m = Match(r, tuple(assigned[i]))
        ok = bytes_agree(m.predicted_bytes, r.nbytes, bytes_rtol)
        (matched if ok else mismatched).append(m)
    unattributed = tuple(r for i, r in enumerate(rows) if not named[i])
    return CollectiveCheck(tuple(matched), tuple(mismatched), tuple(missing),
                           tuple(unexpected), unattributed, bytes_rtol)
