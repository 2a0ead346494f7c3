"""Device requests as scopes of the one dispatch stack, and eager ops run where they ask.

`with ap.device(spec):` pushes a scope whose `device` is the request; every node built inside
it (in a graph, in a tape's recording) records the request, and an eager op inside it runs on
that device (its operands are copied there first, as TensorFlow does). `with
ap.colocate_with(t):` makes new nodes join t's colocation group (the placer puts the group on
one device); for a variable or a concrete array it requests the device that value lives on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

import adplugin.eager.recording as _recording  # noqa: F401  (its scope taker goes first)
from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import message
from adplugin._lru import LRU
from adplugin._primitive import Primitive, register_scope_taker
from adplugin.eager.variable import Variable
from adplugin.ir.graph import Graph, GraphError, Node, Tensor
from adplugin.placement.devices import DeviceSpec, PlacementError, parse, resolve


class device:  # noqa: N801  (a context manager named like TensorFlow's tf.device)
    """`with ap.device("cpu:1"):` requests a device for everything built or run inside.

    Accepts a `jax.Device`, `"cpu:1"`, `"gpu:0"`, `"gpu"` (the first GPU), TensorFlow's
    `"/device:GPU:0"` and `"/cpu:0"`, or None (clears the request). Graph and tape nodes
    record it (the placer decides, see `Graph.placement`); eager ops run on the device;
    variables created inside live there; an `ap.function` called inside runs there.
    """

    def __init__(self, spec: Any):
        self.spec = parse(spec)

    def __enter__(self) -> DeviceSpec | None:
        _context.push(self, device=self.spec)
        return self.spec

    def __exit__(self, *exc: Any) -> None:
        _context.pop(self)

    def __repr__(self) -> str:
        return f"ap.device({str(self.spec) if self.spec is not None else None!r})"


class colocate_with:  # noqa: N801  (TensorFlow's tf.colocate_with)
    """`with ap.colocate_with(t):` places what is built inside on t's device.

    For a graph tensor (or a recorded eager tensor) new nodes join t's colocation group: the
    placer puts the whole group on one device, whatever it decides for t. An outer device
    request is dropped inside (as in TensorFlow); a request made inside is kept, and one that
    contradicts the group is reported by the placer. For a variable or a concrete array it
    requests the device the value lives on. None clears the colocation.
    """

    def __init__(self, target: Any):
        self.target = target
        self.fields: dict[str, Any] = _colocation_fields(target)

    def __enter__(self) -> None:
        _context.push(self, **self.fields)

    def __exit__(self, *exc: Any) -> None:
        _context.pop(self)

    def __repr__(self) -> str:
        return f"ap.colocate_with({self.target!r:.60})"


def _colocation_fields(x: Any) -> dict[str, Any]:
    if x is None:
        return {"colocate": None}
    if isinstance(x, Node):
        x = x.output
    if isinstance(x, Tensor):
        return {"colocate": x, "device": None}
    node = getattr(x, "node", None)  # a recorded eager tensor: its node in the recording
    if type(x) is _recording.EagerTensor and node is not None:
        return {"colocate": node, "device": None}
    if isinstance(x, Variable):
        return {"colocate": None, "device": parse(variable_device(x))}
    value = getattr(x, "materialized", x)
    if isinstance(value, jax.Array) and not jx.is_tracer(value):
        devices = value.devices()
        if len(devices) == 1:
            return {"colocate": None, "device": parse(next(iter(devices)))}
    raise PlacementError(message(
        "colocate_with", "cannot colocate with this value", f"{type(x).__name__} {x!r:.60}",
        "a graph tensor, a recorded eager tensor, a variable, or an array on one device",
        "pass the tensor whose device the new ops should share"))


def variable_device(v: Variable) -> Any:
    """The device a variable's value lives on (its requested device if it has one)."""
    requested = getattr(v, "_device", None)
    if requested is not None:
        return requested
    stored = v._stored
    devices = stored.devices() if isinstance(stored, jax.Array) else ()
    return next(iter(devices)) if len(devices) == 1 else None


def derived_from(node: Node) -> Any:
    """The scope in which a transform builds what it derives from `node` (its derivative
    nodes): colocated with it when it is placed, nothing otherwise (no cost unplaced)."""
    if node.device is None and node.colocate is None:
        return contextlib.nullcontext()
    return colocate_with(node.output)


def variable_home(device: Any, scope: Any, value: Any) -> tuple[Any, Any]:
    """A new variable's device (`device=`, else the enclosing device scope's request, else
    None: no request) and its initial value put there."""
    spec = parse(device) if device is not None else getattr(scope, "device", None)
    if spec is None:
        return None, value
    home = resolve(spec, op="Variable")
    return home, put(value, sharding_of(home))


def stamp(graph: Graph, node: Node, scope: Any) -> None:
    """Record the scope's request on a node being added to `graph` (called by Graph._add)."""
    node.device = scope.device
    target = scope.colocate
    if target is None:
        return
    if target.graph is not graph:
        raise GraphError(message(
            "colocate_with", "colocating with a tensor of another graph",
            f"{target!r} of {target.graph.name}, for a node of {graph.name}",
            f"a tensor of {graph.name}", "colocate with a tensor of the graph being built"))
    node.colocate = target.node.id


# ----------------------------------------------------------------------------------------------
# Eager ops inside a device scope run there
# ----------------------------------------------------------------------------------------------

_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)
_SHARDINGS: LRU[SingleDeviceSharding] = LRU(64)


def sharding_of(device: Any) -> SingleDeviceSharding:
    """The (cached) single-device sharding of `device`."""
    return _SHARDINGS.get_or_build(device, lambda: SingleDeviceSharding(device))


def put(x: Any, sharding: SingleDeviceSharding) -> Any:
    """`x` on the sharding's device (a `jax.device_put`, skipped when it is there already)."""
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        return jax.device_put(x, sharding)
    if isinstance(x, _ARRAY_LIKE):
        return jax.device_put(x, sharding)
    return x


def _bind_on_device(prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> Any:
    scope = _context.effective()
    assert scope is not None and scope.device is not None
    target = sharding_of(resolve(scope.device, op=prim.name))
    return prim.jax_primitive.bind(*[put(a, target) for a in args], **params)


def _device_takes(scope: Any, args: Sequence[Any]) -> Any:
    """Eager ops on concrete values inside a device scope run on the device (the graph's and
    the recording's takers, registered before this one, take theirs first)."""
    if scope.device is None:
        return None
    for a in args:
        if jx.is_tracer(a):
            return None  # JAX's trace (inside ap.function): the function decides
    return _bind_on_device


register_scope_taker(_device_takes)
