"""`ap.shard(x, P(...))`: a sharding constraint, an identity whose output has that sharding.

The primitive carries the `NamedSharding` (mesh and spec) as its param. It lowers to XLA's
sharding annotation (or, where shardings are part of the types, to the typed output), so the
partitioner keeps the value sharded so there. Its derivative is the same constraint: the
cotangent of a sharded value is sharded like it.
"""

from __future__ import annotations

from typing import Any

from jax.sharding import NamedSharding, PartitionSpec

from adplugin import _jax_adapter as jx
from adplugin._primitive import Primitive, ShapeDtype, define_primitive
from adplugin.primitives._wrapping import check_array_like, op, shape_of
from adplugin.sharding.mesh import named_sharding, spec_of


def _shard_eval(x: Any, *, sharding: NamedSharding) -> ShapeDtype:
    return ShapeDtype(x.shape, x.dtype, x.weak_type)


def _shard_lower(ctx: Any, x: Any, *, sharding: NamedSharding) -> Any:
    return jx.lower_sharding_constraint(ctx, x, sharding)


def _shard_batching(args: Any, dims: Any, *, sharding: NamedSharding) -> tuple[Any, Any]:
    (x,), (d,) = args, dims
    spec = list(spec_of(sharding, x.ndim - 1))
    spec.insert(d, None)  # the batch dimension is not sharded by this constraint
    return shard_p.bind(x, sharding=sharding.update(spec=PartitionSpec(*spec))), d


def _shard_jvp(g: Any, out: Any, x: Any, *, sharding: NamedSharding) -> Any:
    return shard_p.bind(g, sharding=sharding)  # the tangent is sharded like the value


def _shard_transpose(ct: Any, x: Any, *, sharding: NamedSharding) -> list[Any]:
    return [shard_p.bind(ct, sharding=sharding)]  # and so is the cotangent


shard_p: Primitive = define_primitive(
    "shard", abstract_eval=_shard_eval, lowering=_shard_lower, jvp=(_shard_jvp,),
    transpose=_shard_transpose,
    batching=_shard_batching,
    sharding=lambda specs, x, *, sharding: spec_of(sharding, len(x.shape)))


@op(static_argnames=("spec",))
def _shard(x: Any, spec: NamedSharding) -> Any:
    return shard_p.bind(x, sharding=spec)


def shard(x: Any, spec: Any, mesh: Any = None) -> Any:
    """`x` constrained to the sharding `spec` (a `PartitionSpec` such as `P("data", None)`,
    or a `NamedSharding`) on `mesh` (default: the `ap.mesh` / `jax.set_mesh` mesh in scope).

    In a graph it adds a sharding node (`to_text` shows `f32[8@data,4]`); on arrays it puts
    the value in that sharding; inside `jax.jit` it is a sharding constraint. Gradients
    through it are sharded the same way.
    """
    check_array_like("shard", x)
    return _shard(x, named_sharding("shard", spec, shape_of(x), mesh))
