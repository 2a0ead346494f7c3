"""Sharded execution: what XLA's partitioner did to a program, and checks against predictions.

- `collectives.py`: `collectives(compiled)`, the table of every collective of a compiled
  program (kind, mesh axes, bytes, op_name, source line).
- `compare.py`: `compare_collectives(predicted, measured)`, predicted rows against that table.
- `axes.py`: which mesh axes a collective's device groups span.
- `hlo.py`: the small reader of XLA's HLO text they rely on.
- `mesh.py`: the mesh in scope (`mesh`, `current_mesh`) and partition-spec checks.
- `propagate.py`: every graph node's sharding from the annotations, with each primitive's
  rule (`Graph.sharding`, `Graph.explain_sharding`).
- `predict.py`: the collectives the propagated shardings call for, per node
  (`Graph.predicted_collectives`).
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
from adplugin.sharding.mesh import MeshError, current_mesh, mesh
from adplugin.sharding.predict import predict_collectives
from adplugin.sharding.propagate import (
    Decision,
    Propagation,
    ShardingConflictError,
    propagate,
)

__all__ = [
    "KINDS", "Collective", "CollectiveCheck", "Collectives", "CollectivesError", "HloParseError",
    "Match", "Operand", "PredictedCollective", "collectives", "compare_collectives",
    "Decision", "MeshError", "Propagation", "ShardingConflictError", "current_mesh", "mesh",
    "predict_collectives", "propagate",
]

from adplugin.sharding.planner import ShardingPlan, plan_sharding  # noqa: E402

__all__ += ["ShardingPlan", "plan_sharding"]
