"""The one module that touches JAX's semi-public and private API.

JAX has no stable API for custom primitives and changes it in most releases, so everything
adplugin needs from `jax.extend`, `jax.interpreters` and `jax._src` is reached through the
functions below. Each is written against the installed JAX by feature detection (attributes and
signatures), never by comparing version numbers.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import jax
import numpy as np
from jax import core as _public_core
from jax._src import config as _config  # noqa: I001  (private: config snapshots, cache keys)
from jax._src import core as _core  # private: the current trace (dispatch scopes)
from jax._src import dispatch as _dispatch  # private: eager impl of a primitive
from jax._src import dtypes as _dtypes  # private: weak-type-aware promotion
from jax._src.interpreters import mlir as _mlir_private  # sharding annotations in lowering
from jax.extend import core as jex_core
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo
from jax.interpreters import ad, batching, mlir
from jax.sharding import NamedSharding, PartitionSpec

from adplugin._params import params_key

__all__ = [
    "JaxPrimitive",
    "LoweringContext",
    "Zero",
    "hlo",
    "ir",
    "is_tracer",
    "new_primitive",
    "result_type",
]

JaxPrimitive = jex_core.Primitive
Zero = ad.Zero
not_mapped = None  # batching's marker for an operand without a batch dimension


JAX_VALUE_TYPES = (jax.Array, _public_core.Tracer)


def is_tracer(x: Any) -> bool:
    return isinstance(x, _public_core.Tracer)


# ----------------------------------------------------------------------------------------------
# Trace state and configuration (dispatch scopes, cache keys, background compiles)
# ----------------------------------------------------------------------------------------------

_trace_ctx = _core.trace_ctx


def current_trace() -> Any:
    """JAX's current trace (an identity: it changes when JAX starts tracing, e.g. in jit)."""
    return _trace_ctx.trace


def at_top_level() -> bool:
    """Whether JAX evaluates eagerly here (no jit/grad/vmap trace is active)."""
    return bool(_trace_ctx.is_top_level())


_trace_context: Callable[[], Any] = getattr(_config, "trace_context", lambda: ())


def config_key() -> Any:
    """Everything in JAX's configuration that changes what a traced program computes
    (x64, default device, mesh, matmul precision, ...): part of every compiled-program key."""
    return _trace_context()


# Thread-local context managers of JAX that are not options (meshes, default device scopes).
_CONTEXT_STATES = [getattr(_config, name) for name in (
    "mesh_context_manager", "abstract_mesh_context_manager", "device_context",
    "compute_on_context_manager", "xla_metadata_context_manager") if hasattr(_config, name)]


class ConfigSnapshot:
    """The caller's thread-local JAX configuration, to re-enter in another thread (a background
    compile must see the caller's `enable_x64`, `default_device` and mesh)."""

    def __init__(self) -> None:
        states = [*getattr(_config, "config_states", {}).values(), *_CONTEXT_STATES]
        self._saved = [(s, s.get_local()) for s in states if hasattr(s, "swap_local")]

    @contextmanager
    def entered(self) -> Iterator[None]:
        previous = [(s, s.swap_local(v)) for s, v in self._saved]
        try:
            yield
        finally:
            for s, v in reversed(previous):
                s.set_local(v)


def result_type(*args: Any) -> tuple[np.dtype, bool]:
    """NumPy/JAX promotion of `args` (Python scalars weak): (dtype, weak_type)."""
    dtype, weak = _dtypes.result_type(*args, return_weak_type_flag=True)
    return np.dtype(dtype), bool(weak)


def is_weakly_typed(x: Any) -> bool:
    return bool(_dtypes.is_weakly_typed(x))


def kind_of(dtype: Any) -> str:
    """NumPy's dtype kind letter, with "f" for every floating type (bfloat16 and float8 too)."""
    kind = _KINDS.get(dtype)
    if kind is None:
        d = np.dtype(dtype)
        kind = "f" if d.kind == "V" and jax.numpy.issubdtype(d, jax.numpy.floating) else d.kind
        if isinstance(dtype, np.dtype):
            _KINDS[dtype] = kind  # one entry per dtype: bounded
    return kind


_KINDS: dict[np.dtype, str] = {}


def to_inexact(dtype: Any) -> np.dtype:
    """The floating dtype jax.numpy computes in for an operand of `dtype` (int32 -> float32)."""
    return canonical_dtype(_dtypes.to_inexact_dtype(np.dtype(dtype)))


def canonical_dtype(dtype: Any) -> np.dtype:
    """The dtype JAX actually uses for `dtype` (float64 -> float32 unless x64 is enabled)."""
    return np.dtype(_dtypes.canonicalize_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# Abstract values and shardings
# ----------------------------------------------------------------------------------------------

def make_aval(
    like: Any, shape: Sequence[int], dtype: Any, weak_type: bool, spec: Sequence[Any] | None
) -> Any:
    """An output aval derived from input aval `like`, keeping its mesh and manual axes.

    `spec` is the output's partition spec (one entry per dimension) or None when no input
    carries a mesh in its type (the common, automatically sharded case).
    """
    shape = tuple(int(d) for d in shape)
    if spec is None or like.sharding.mesh.empty:
        sharding = like.sharding.update(spec=PartitionSpec(*([None] * len(shape))))
    else:
        sharding = like.sharding.update(spec=PartitionSpec(*spec))
    return like.update(shape=shape, dtype=np.dtype(dtype), weak_type=weak_type, sharding=sharding)


def mesh_spec(aval: Any) -> tuple[Any, ...] | None:
    """The partition spec of an aval whose type carries a mesh, else None."""
    sharding = getattr(aval, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (len(aval.shape) - len(spec))


def shaped_array(shape: Sequence[int], dtype: Any, weak_type: bool = False) -> Any:
    return _public_core.ShapedArray(tuple(shape), np.dtype(dtype), weak_type=weak_type)


# ----------------------------------------------------------------------------------------------
# Lowering
# ----------------------------------------------------------------------------------------------

class LoweringContext:
    """What a lowering rule sees: input/output avals and helpers to build StableHLO types."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any):
        self._ctx = ctx

    @property
    def avals_in(self) -> Sequence[Any]:
        return self._ctx.avals_in

    @property
    def avals_out(self) -> Sequence[Any]:
        return self._ctx.avals_out

    def ir_type(self, aval: Any) -> Any:
        if _AVAL_TO_IR_TYPE_TAKES_MODULE_CONTEXT:
            return mlir.aval_to_ir_type(self._ctx.module_context, aval)  # type: ignore
        return mlir.aval_to_ir_type(aval)  # type: ignore[call-arg,unused-ignore]

    def out_type(self, index: int = 0) -> Any:
        return self.ir_type(self._ctx.avals_out[index])

    def full(self, value: Any, aval: Any = None) -> Any:
        """A constant filled with `value`, shaped and typed like `aval` (default: the output)."""
        aval = self._ctx.avals_out[0] if aval is None else aval
        scalar = ir_constant(np.asarray(value, aval.dtype))
        return hlo.broadcast_in_dim(self.ir_type(aval), scalar, dense_int_array(()))


_AVAL_TO_IR_TYPE_TAKES_MODULE_CONTEXT = len(inspect.signature(mlir.aval_to_ir_type).parameters) > 1


def ir_constant(value: Any) -> Any:
    return mlir.ir_constant(np.asarray(value))


def dense_int_array(values: Sequence[int]) -> Any:
    return mlir.dense_int_array(list(values))


def scalar_ir_type(dtype: Any) -> Any:
    return ir.RankedTensorType.get([], mlir.dtype_to_ir_type(np.dtype(dtype)))


# Outputs whose type carries an explicit-mesh sharding get the sharding annotation jax adds.
_annotate_sharding: Callable[[Any, Any, Any], Any] = getattr(
    _mlir_private, "lower_with_sharding_in_types", lambda ctx, op, aval: op)


def _register_lowering(prim: Any, rule: Callable[..., Any]) -> None:
    def lowering(ctx: Any, *operands: Any, **params: Any) -> list[Any]:
        outs = rule(LoweringContext(ctx), *operands, **params)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [_annotate_sharding(ctx, o, a) for o, a in zip(outs, ctx.avals_out)]

    mlir.register_lowering(prim, lowering)


def lower_sharding_constraint(ctx: LoweringContext, x: Any, sharding: NamedSharding) -> Any:
    """`x` constrained to `sharding` in a lowering rule: XLA's sharding annotation (the one
    `with_sharding_constraint` emits), whatever the mesh's axis types. Where the output type
    carries explicit axes, the typed annotation is added from the type instead."""
    raw = ctx._ctx
    aval = raw.avals_out[0]
    typed = getattr(aval, "sharding", None)
    if (isinstance(typed, NamedSharding) and not typed.mesh.empty
            and not typed.mesh.are_all_axes_auto and any(e is not None for e in typed.spec)):
        return x
    ndim = len(aval.shape)
    if _config.use_shardy_partitioner.value:
        proto: Any = sharding._to_sdy_sharding(ndim)
    else:
        proto = sharding._to_xla_hlo_sharding(ndim).to_proto()
    return _mlir_private.wrap_with_sharding_op(raw, x, aval, proto)


# ----------------------------------------------------------------------------------------------
# Registration of one primitive into JAX
# ----------------------------------------------------------------------------------------------

_typeof: Callable[[Any], Any] = jax.typeof


def _tangent_aval(aval: Any) -> Any:
    return aval.to_tangent_aval()


def _cotangent_aval(aval: Any) -> Any:
    to_ct = getattr(aval, "to_ct_aval", None)
    return to_ct() if to_ct is not None else aval.to_tangent_aval()


def new_primitive(name: str) -> Any:
    prim = jex_core.Primitive(name)
    prim.def_impl(_EagerImpl(prim))
    return prim


class _EagerImpl:
    """Eager evaluation of a primitive: one cached `jax.jit` per params (C++ fast dispatch),
    falling back to JAX's own path for unhashable params. The cache is a plain dict (the
    eager hot path) bounded by evicting its oldest entry."""

    MAX_ENTRIES = 1024

    def __init__(self, prim: Any):
        self.prim = prim
        self.cache: dict[Any, Callable[..., Any]] = {}

    def __call__(self, *args: Any, **params: Any) -> Any:
        try:
            key = params_key(params)
            fn = self.cache.get(key)
        except TypeError:
            return _dispatch.apply_primitive(self.prim, *args, **params)
        if fn is None:
            if len(self.cache) >= self.MAX_ENTRIES:
                self.cache.pop(next(iter(self.cache), None), None)
            fn = self.cache[key] = jax.jit(partial(self.prim.bind, **params))
        return fn(*args)


def _match_sharding(x: Any, aval: Any) -> Any:
    """`x` resharded to `aval`'s sharding where shardings are part of the types and differ.

    JAX requires a tangent (cotangent) to have its primal's type, sharding included; a rule
    computing it from other values may derive another sharding (a sum broadcast back, say).
    """
    want = getattr(aval, "sharding", None)
    if want is None or want.mesh.empty or want.mesh.are_all_axes_auto:
        return x
    have = _typeof(x).sharding
    if tuple(have.spec) == tuple(want.spec):
        return x
    return jax.sharding.reshard(x, want)


def register(
    prim: Any,
    *,
    abstract_eval: Callable[..., Any],
    lowering: Callable[..., Any],
    jvp: Callable[..., Any],
    transpose: Callable[..., Any] | None,
    batching_rule: Callable[..., Any],
) -> None:
    """Fill JAX's tables for `prim`: abstract eval, lowering, JVP, transpose, batching.

    `jvp(primals, tangents, **params)` gets None for a symbolically zero tangent and returns
    (primal_out, tangent_out or None). `transpose(ct, linear_mask, *args, **params)` gets the
    aval of each linear argument in place of its value and returns one cotangent per argument.
    """
    prim.def_abstract_eval(abstract_eval)
    _register_lowering(prim, lowering)

    def jax_jvp(primals: Sequence[Any], tangents: Sequence[Any], **params: Any) -> Any:
        ts = [None if type(t) is ad.Zero else t for t in tangents]
        out, t_out = jvp(primals, ts, **params)
        if t_out is None:
            return out, ad.Zero(_tangent_aval(_typeof(out)))
        return out, _match_sharding(t_out, _typeof(out))

    ad.primitive_jvps[prim] = jax_jvp

    if transpose is not None:
        def jax_transpose(ct: Any, *args: Any, **params: Any) -> list[Any]:
            linear = [ad.is_undefined_primal(a) for a in args]
            if type(ct) is ad.Zero:
                return [ad.Zero(_cotangent_aval(a.aval)) if lin else None
                        for a, lin in zip(args, linear)]
            values = [a.aval if lin else a for a, lin in zip(args, linear)]
            cts = transpose(ct, linear, *values, **params)
            return [_match_sharding(c, a.aval) if lin and c is not None else None
                    for c, a, lin in zip(cts, args, linear)]

        ad.primitive_transposes[prim] = jax_transpose

    batching.primitive_batchers[prim] = batching_rule


# ----------------------------------------------------------------------------------------------
# Jaxprs (read by ap.trace)
# ----------------------------------------------------------------------------------------------

def is_literal(v: Any) -> bool:
    """Whether a jaxpr equation operand is an inline constant (its value is `v.val`)."""
    return isinstance(v, jex_core.Literal)


def jaxpr_and_consts(obj: Any) -> tuple[Any, Sequence[Any]]:
    """The open jaxpr and the values of its constvars, from a closed or an open jaxpr."""
    if isinstance(obj, jex_core.ClosedJaxpr):
        return obj.jaxpr, obj.consts
    if isinstance(obj, jex_core.Jaxpr):
        return obj, ()
    raise TypeError(f"not a jaxpr: {type(obj).__name__}")


def sub_jaxpr(params: dict[str, Any], names: Sequence[str]) -> Any | None:
    """The first jaxpr among `params[name]` for `names` (a call-like equation's body)."""
    for name in names:
        obj = params.get(name)
        if isinstance(obj, (jex_core.ClosedJaxpr, jex_core.Jaxpr)):
            return obj
    return None


# ----------------------------------------------------------------------------------------------
# Lowered modules (read by ap.testing.check_primitive)
# ----------------------------------------------------------------------------------------------

def lowered_result_types(lowered: Any, expected: Sequence[tuple[Sequence[int], Any]]
                         ) -> tuple[list[str], list[str]]:
    """The result types of a lowered program's main function as text (`tensor<8x3xf32>`), and
    the types the (shape, dtype) pairs `expected` have in the same notation."""
    module = lowered.compiler_ir("stablehlo")
    got: list[str] = []
    for op in module.body.operations:
        if (op.operation.name == "func.func"
                and ir.StringAttr(op.attributes["sym_name"]).value == "main"):
            ftype = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
            got = [str(t) for t in ftype.results]
    with module.context, ir.Location.unknown():
        want = [str(ir.RankedTensorType.get(list(shape), mlir.dtype_to_ir_type(np.dtype(dtype))))
                for shape, dtype in expected]
    return got, want


# ----------------------------------------------------------------------------------------------
# Matmul precision (read by adplugin.primitives.linalg)
# ----------------------------------------------------------------------------------------------

def canonical_precision(precision: Any) -> Any:
    """`precision` as `lax.dot_general` keeps it: None, a pair of `lax.Precision`, or a dot
    algorithm (preset). None reads `jax.default_matmul_precision`, as `jnp.matmul` does."""
    from jax._src.lax import lax as _lax_internal  # private: jnp's own canonicalization

    canonicalize = getattr(_lax_internal, "canonicalize_precision", None)
    if canonicalize is not None:
        return canonicalize(precision)
    if precision is None:  # fallback: the public configuration value
        precision = getattr(jax.config, "jax_default_matmul_precision", None)
        if precision is None:
            return None
    if isinstance(precision, str):
        precision = jax.lax.Precision(precision)
    if isinstance(precision, jax.lax.Precision):
        return precision, precision
    return tuple(jax.lax.Precision(p) if isinstance(p, str) else p for p in precision)


# ----------------------------------------------------------------------------------------------
# CHLO ops (erf's lowering) and JAX functions as lowering rules, equations re-bound (ap.trace)
# ----------------------------------------------------------------------------------------------

from jax.extend.mlir.dialects import chlo  # noqa: E402, F401  (erf, sinh, ...: CHLO ops)


def lower_function(ctx: LoweringContext, fn: Callable[..., Sequence[Any]],
                   *operands: Any) -> list[Any]:
    """Lower `fn` (a JAX-traceable function of the operands returning a list of arrays) inside
    a lowering rule: its results as IR values, one per output."""
    outs = mlir.lower_fun(fn, multiple_results=True)(ctx._ctx, *operands)
    return [o[0] if isinstance(o, (list, tuple)) else o for o in outs]


def rebind_equation(eqn: Any, *args: Any) -> list[Any]:
    """Apply a jaxpr equation's primitive with its params to `args` in the current trace (as
    `jax.core.eval_jaxpr` does), e.g. a `custom_jvp_call` with its rule: a list of outputs."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        out = eqn.primitive.bind(*subfuns, *args, **params)
    else:
        out = eqn.primitive.bind(*args, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def effects_of(eqn: Any) -> bool:
    """Whether a jaxpr equation has side effects (it may not be dropped as dead code)."""
    return bool(getattr(eqn, "effects", None))


# ----------------------------------------------------------------------------------------------
# Placement (adplugin.placement): host callbacks in a lowered program; lowerings written in JAX
# ----------------------------------------------------------------------------------------------

def has_host_callbacks(lowered: Any) -> bool:
    """Whether a `jax.stages.Lowered` program calls back into Python. Such programs execute
    synchronously where they are dispatched (on CPU), so the placed executor dispatches them
    from a worker thread per device to let other devices' programs run meanwhile."""
    args = getattr(getattr(lowered, "_lowering", None), "compile_args", None)
    if isinstance(args, dict) and "host_callbacks" in args:
        return bool(args["host_callbacks"])
    return "callback" in lowered.as_text()


def lowering_from_jax(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A `define_primitive` lowering rule made from a JAX function of the operands
    (`fn(*operands, **params)` with `jax.numpy`/`lax`, host callbacks included), lowered by
    JAX itself into the primitive's place in the module."""

    def rule(ctx: LoweringContext, *operands: Any, **params: Any) -> Any:
        lowered = mlir.lower_fun(partial(fn, **params), multiple_results=False)
        outs = lowered(ctx._ctx, *operands)
        return [o[0] if isinstance(o, (list, tuple)) else o for o in outs]

    return rule


from jax._src.lib import xla_client as _xla_client  # noqa: E402  (private: device copies)

_batched_copy = getattr(_xla_client, "batched_copy_array_to_devices_with_sharding", None)
_REUSE_INPUT = getattr(getattr(_xla_client, "ArrayCopySemantics", None), "REUSE_INPUT", None)


def copy_to_device(arrays: Sequence[Any], sharding: Any) -> list[Any]:
    """`jax.device_put(arrays, sharding)` for single-device `jax.Array`s going to another
    single device: the batched copy `device_put` itself makes for them, without its
    Python-side dispatch (a quarter of the time); `jax.device_put` where that is missing."""
    devices = getattr(sharding, "_internal_device_list", None)
    if _batched_copy is None or _REUSE_INPUT is None or devices is None:
        return list(jax.device_put(list(arrays), sharding))
    n = len(arrays)
    return list(_batched_copy(list(arrays), [devices] * n, [sharding] * n, [_REUSE_INPUT] * n))


def jaxpr_function(closed: Any) -> Callable[..., list[Any]]:
    """A closed jaxpr as a Python function of its inputs returning the list of its outputs."""
    return jex_core.jaxpr_as_fun(closed)  # type: ignore[no-any-return]


# --- user source lines ---------------------------------------------------------------------------
# Graph nodes keep the Python traceback of the line that built them; lowering binds each node's
# primitive under it, so XLA's metadata (source_file, source_line: what `ap.collectives` shows
# for a collective) names the user's line, not the graph runner's. adplugin's own frames are
# skipped as JAX skips its own.

from jax._src import source_info_util as _source_info  # noqa: E402  (private: source lines)

_source_info.register_exclusion(os.path.dirname(os.path.abspath(__file__)) + os.sep)


def capture_traceback() -> Any:
    """The current Python traceback (a native capture: a small fraction of a microsecond)."""
    return _source_info.xla_client.Traceback.get_traceback()


def user_source(traceback: Any) -> str | None:
    """`file.py:12` of the first frame of `traceback` outside adplugin and JAX, or None."""
    frame = _source_info.user_frame(traceback) if traceback is not None else None
    if frame is None:
        return None
    return f"{os.path.basename(frame.file_name)}:{frame.start_line}"


def source_context(traceback: Any) -> Any:
    """Binds inside it are attributed to `traceback`'s user frame in the lowered program."""
    return _source_info.user_context(traceback)
