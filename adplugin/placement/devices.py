"""Device specs: what a request names, the devices that exist, and soft placement.

A request names a platform and, optionally, an index: `"cpu:1"`, `"gpu:0"`, `"gpu"` (any GPU:
the first), TensorFlow's `"/device:GPU:0"`, `"/cpu:0"` and `"/job:localhost/replica:0/task:0/
device:CPU:0"` spellings, or a `jax.Device` itself. Indices are the devices' `id`s, so
`"cpu:1"` is `jax.devices("cpu")[1]` on a host with several CPU devices. A request is resolved
against the devices this process has; with soft placement on (the default, as in TensorFlow 2)
a request no device satisfies falls back to an available one, and the placer says so.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import jax

from adplugin._errors import AdpluginError, message


class PlacementError(AdpluginError, ValueError):
    """A device request that cannot be satisfied (or cannot be parsed)."""


@dataclass(frozen=True)
class DeviceSpec:
    """A requested device: a platform ("cpu", "gpu", "tpu", ...) and an optional index."""

    platform: str
    index: int | None = None

    def __str__(self) -> str:
        return self.platform if self.index is None else f"{self.platform}:{self.index}"

    def matches(self, device: Any) -> bool:
        return device.platform == self.platform and (self.index is None
                                                     or device.id == self.index)


_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
_SHORT = re.compile(r"^([a-z][a-z0-9_]*)(?::(\d+|\*))?$")
_FORMS = ('a jax.Device, "cpu:1", "gpu:0", "gpu", "/device:GPU:0", "/cpu:0", '
          '"/job:localhost/replica:0/task:0/device:CPU:0", or None')


def _bad_spec(spec: Any, problem: str) -> PlacementError:
    return PlacementError(message("device", problem, f"{spec!r:.80}", _FORMS,
                                  'write the device as "platform:index", e.g. "cpu:0"'))


def parse(spec: Any) -> DeviceSpec | None:
    """The `DeviceSpec` a request names (None for None: no request)."""
    if spec is None or isinstance(spec, DeviceSpec):
        return spec
    if isinstance(spec, jax.Device):
        return DeviceSpec(spec.platform, spec.id)
    if not isinstance(spec, str):
        raise _bad_spec(spec, f"a device request must be a device or a string, not a "
                              f"{type(spec).__name__}")
    text = spec.strip().lower()
    if not text.startswith("/"):
        return _short(spec, text)
    found: DeviceSpec | None = None
    for part in text.strip("/").split("/"):
        key, _, rest = part.partition(":")
        if key == "job":
            if rest not in ("localhost", "*", ""):
                raise _bad_spec(spec, f"job {rest!r} is not this process (adplugin places on "
                                      "local devices only)")
        elif key in ("replica", "task"):
            if rest not in ("0", "*", ""):
                raise _bad_spec(spec, f"{key} {rest} is not this process (only {key} 0 is "
                                      "local)")
        elif key == "device":
            found = _short(spec, rest)
        else:
            found = _short(spec, part)
    return found


def _short(spec: Any, text: str) -> DeviceSpec:
    match = _SHORT.match(text)
    if match is None:
        raise _bad_spec(spec, "not a device name")
    platform, index = match.groups()
    platform = _ALIASES.get(platform, platform)
    return DeviceSpec(platform, None if index in (None, "*") else int(index))


# ----------------------------------------------------------------------------------------------
# The devices of this process
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def available_devices() -> tuple[Any, ...]:
    """Every local device of every platform JAX initialized (default platform first); a
    process's devices do not change once JAX started."""
    devices = list(jax.local_devices())
    for platform in ("cpu", "gpu", "tpu"):
        if any(d.platform == platform for d in devices):
            continue
        try:
            devices += jax.local_devices(backend=platform)
        except RuntimeError:  # that platform is not available here
            continue
    return tuple(devices)


def default_device() -> Any:
    """Where JAX runs a computation with no placement (`jax.default_device` honoured)."""
    chosen = getattr(jax.config, "jax_default_device", None)
    if isinstance(chosen, jax.Device):
        return chosen
    if isinstance(chosen, str):
        return jax.devices(chosen)[0]
    return jax.devices()[0]


def device_name(device: Any) -> str:
    """"cpu:1": the platform and id, the form requests are written in."""
    return f"{device.platform}:{device.id}"


def available_names() -> str:
    """The available devices, compactly ("cpu:0..7")."""
    by_platform: dict[str, list[int]] = {}
    for d in available_devices():
        by_platform.setdefault(d.platform, []).append(d.id)
    parts = []
    for platform, ids in by_platform.items():
        ids = sorted(ids)
        contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
        if len(ids) > 2 and contiguous:
            parts.append(f"{platform}:{ids[0]}..{ids[-1]}")
        else:
            parts.extend(f"{platform}:{i}" for i in ids)
    return ", ".join(parts)


def match(spec: DeviceSpec) -> Any | None:
    """The device a request names, or None when this process has none such."""
    for d in available_devices():
        if spec.matches(d):
            return d
    return None


def fallback(spec: DeviceSpec) -> Any:
    """Soft placement's choice for a request nothing satisfies: the first device of the same
    platform, else the default device."""
    same = next((d for d in available_devices() if d.platform == spec.platform), None)
    return same if same is not None else default_device()


# ----------------------------------------------------------------------------------------------
# Soft placement (a process-wide setting, as TensorFlow's; part of every placed program's key)
# ----------------------------------------------------------------------------------------------

class _Setting:
    soft = True


def set_soft_device_placement(enabled: bool) -> None:
    """With soft placement on (the default), a request no device satisfies is placed on an
    available device and the placement says why; off, it is an error listing the requests,
    the devices there are, and the fix."""
    _Setting.soft = bool(enabled)


def get_soft_device_placement() -> bool:
    return _Setting.soft


def resolve(spec: DeviceSpec, soft: bool | None = None, op: str = "device") -> Any:
    """The device a request runs on now (eager ops): its match, soft placement's fallback, or
    an error when soft placement is off."""
    device = match(spec)
    if device is not None:
        return device
    if get_soft_device_placement() if soft is None else soft:
        return fallback(spec)
    raise PlacementError(message(
        op, f"no device {spec} here, and soft device placement is off", f"a request for {spec}",
        f"one of the available devices: {available_names()}",
        "request an available device, or call ap.set_soft_device_placement(True) to run on "
        f"{device_name(fallback(spec))} instead"))
