"""The device mesh shardings refer to: `with ap.mesh(mesh):`, or JAX's own `jax.set_mesh`.

A partition spec names mesh axes per dimension (`P("data", None)`); it means something only
with a mesh. `ap.mesh(mesh)` sets the mesh for the block (it also enters `jax.set_mesh`, so
JAX code in the block sees the same mesh); outside it, the mesh set with `jax.set_mesh` is
used. Annotations made in the block keep their mesh: a graph built there runs on it later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from adplugin import _context
from adplugin._errors import AdpluginError, message

Spec = tuple[Any, ...]  # one entry per dimension: None, an axis name, or a tuple of names


class MeshError(AdpluginError, ValueError):
    """A sharding that no mesh gives a meaning to, or that does not fit its mesh or array."""


@contextmanager
def mesh(m: Mesh) -> Iterator[Mesh]:
    """`with ap.mesh(jax.make_mesh((2, 4), ("data", "model"))):` shardings in the block
    (`ap.shard`, `placeholder(..., sharding=)`, `Variable(..., sharding=)`) refer to `m`."""
    if not isinstance(m, Mesh):
        raise MeshError(message("ap.mesh", "not a device mesh", f"{type(m).__name__} {m!r:.60}",
                                "a jax.sharding.Mesh", "build one with jax.make_mesh(shape, "
                                "axis_names)"))
    owner = object()
    _context.push(owner, mesh=m)
    try:
        with jax.set_mesh(m):
            yield m
    finally:
        _context.pop(owner)


def current_mesh() -> Mesh | None:
    """The mesh of the innermost `ap.mesh` block, else the one `jax.set_mesh` set, else None."""
    scope = _context.current()
    if scope is not None and scope.mesh is not None:
        return scope.mesh  # type: ignore[no-any-return]
    m = jax.sharding.get_mesh()
    return None if m.empty else m


def normalized_spec(op: str, spec: Any, ndim: int, m: Mesh) -> Spec:
    """`spec` (a PartitionSpec or a sequence) as one entry per dimension, checked against
    the mesh's axis names and the array's rank (each axis shards at most one dimension)."""
    if isinstance(spec, NamedSharding):
        spec = spec.spec
    if spec is None:
        spec = ()
    if not isinstance(spec, (PartitionSpec, tuple, list)):
        raise MeshError(message(op, "the sharding is not a partition spec", repr(spec)[:80],
                                "a jax.sharding.PartitionSpec such as P('data', None)",
                                "pass P(...) with one mesh axis (or None) per dimension"))
    entries = tuple(spec)
    if len(entries) > ndim:
        raise MeshError(message(op, "the spec has more entries than the array has dimensions",
                                f"{PartitionSpec(*entries)} for a rank-{ndim} array",
                                f"at most {ndim} entries", "drop the extra entries"))
    used: list[str] = []
    for e in entries:
        names = () if e is None else (e,) if isinstance(e, str) else tuple(e)
        for a in names:
            if a not in m.axis_names:
                raise MeshError(message(op, f"unknown mesh axis {a!r}",
                                        f"{PartitionSpec(*entries)}",
                                        f"axes of the mesh {tuple(m.axis_names)}",
                                        "use the mesh's axis names (or open the right ap.mesh)"))
        used += names
    if len(used) != len(set(used)):
        raise MeshError(message(op, "one mesh axis shards two dimensions",
                                f"{PartitionSpec(*entries)}", "each axis at most once",
                                "shard each dimension over distinct mesh axes"))
    return entries + (None,) * (ndim - len(entries))


def named_sharding(op: str, spec: Any, shape: Sequence[int], m: Mesh | None = None
                   ) -> NamedSharding:
    """The NamedSharding of `spec` on `m` (default: the current mesh) for an array of
    `shape`; a clear error when there is no mesh."""
    if isinstance(spec, NamedSharding) and m is None:
        m = spec.mesh  # type: ignore[assignment]
    m = m if m is not None else current_mesh()
    if m is None:
        raise MeshError(message(op, "a sharding needs a device mesh, and none is set",
                                f"sharding {spec!r:.60} outside any mesh", "a mesh in scope",
                                "wrap the code in `with ap.mesh(jax.make_mesh(...)):` (or "
                                "jax.set_mesh)"))
    return NamedSharding(m, PartitionSpec(*normalized_spec(op, spec, len(shape), m)))


def spec_of(sharding: NamedSharding | None, ndim: int) -> Spec:
    """One entry per dimension (replicated: all None)."""
    if sharding is None:
        return (None,) * ndim
    entries = tuple(sharding.spec)
    return entries + (None,) * (ndim - len(entries))


def axis_names(entry: Any) -> tuple[str, ...]:
    """The mesh axes one spec entry names."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def spec_text(shape: Sequence[int], spec: Spec) -> str:
    """`4778@x,100`: each dimension, with `@axes` where it is sharded."""
    dims = []
    for d, e in zip(shape, spec):
        names = axis_names(e)
        dims.append(f"{d}@{'+'.join(names)}" if names else str(d))
    return ",".join(dims)


def constrain(value: Any, sharding: NamedSharding) -> Any:
    """A traced value constrained to `sharding` (`reshard` where the mesh's axes are
    explicit, so shardings are part of the types; `with_sharding_constraint` otherwise)."""
    explicit = {a for a, t in zip(sharding.mesh.axis_names, sharding.mesh.axis_types)
                if t == AxisType.Explicit}
    if explicit & {a for e in sharding.spec for a in axis_names(e)}:
        return jax.sharding.reshard(value, sharding)
    return jax.lax.with_sharding_constraint(value, sharding)
