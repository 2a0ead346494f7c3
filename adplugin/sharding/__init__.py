"""Sharded execution: what XLA's partitioner did to a program, and checks against predictions.

- `collectives.py`: `collectives(compiled)`, the table of every collective of a compiled
  program (kind, mesh axes, bytes, op_name, source line).
- `compare.py`: `compare_collectives(predicted, measured)`, predicted rows against that table.
- `axes.py`: which mesh axes a collective's device groups span.
- `hlo.py`: the small reader of XLA's HLO text they rely on.
"""

from adplugin.sharding.collectives import (
    KINDS,
    Collective,
    Collectives,
    CollectivesError,
    Operand,
    collectives,
)
from adplugin.sharding.compare import (
    CollectiveCheck,
    Match,
    PredictedCollective,
    compare_collectives,
)
from adplugin.sharding.hlo import HloParseError

__all__ = [
    "KINDS", "Collective", "CollectiveCheck", "Collectives", "CollectivesError", "HloParseError",
    "Match", "Operand", "PredictedCollective", "collectives", "compare_collectives",
]
