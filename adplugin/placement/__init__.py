"""Placement: which device every node runs on, and running graphs across devices (MPMD).

- `devices.py`: device specs (`"cpu:1"`, `"/device:GPU:0"`, a `jax.Device`), the devices of
  this process, soft placement.
- `requests.py`: `ap.device` and `ap.colocate_with` scopes of the dispatch stack; eager ops
  inside a device scope run there.
- `placer.py`: a device and a reason for every node (`Graph.placement`), colocation groups,
  soft placement and its errors.
- `partition.py`: a placed graph cut into one subprogram per device run, with transfers.
- `execution.py`: the subprograms compiled once and dispatched without waiting.
- `schedule.py`, `pipeline.py`: a model split into stages on several devices, trained with
  microbatches under a static GPipe or 1F1B schedule checked before it runs.
"""

from adplugin.placement.devices import (
    DeviceSpec,
    PlacementError,
    available_devices,
    get_soft_device_placement,
    set_soft_device_placement,
)
from adplugin.placement.execution import PlacedProgram
from adplugin.placement.partition import Partition, Subprogram, Transfer
from adplugin.placement.pipeline import Pipeline, PipelineError, PipelineResult
from adplugin.placement.placer import Decision, Placement
from adplugin.placement.requests import colocate_with, derived_from, device
from adplugin.placement.schedule import Action, Schedule, ScheduleError, gpipe, one_f_one_b

__all__ = [
    "Action", "Decision", "DeviceSpec", "Partition", "Pipeline", "PipelineError",
    "PipelineResult", "PlacedProgram", "Placement", "PlacementError", "Schedule",
    "ScheduleError", "Subprogram", "Transfer", "available_devices", "colocate_with",
    "derived_from", "device", "get_soft_device_placement", "gpipe", "one_f_one_b",
    "set_soft_device_placement",
]
