"""adplugin: an automatic-differentiation toolchain that plugs into JAX.

`import adplugin as ap`; see README.md and docs/ for the tour.
"""

from adplugin import extend, testing
from adplugin._primitive import (
    NOT_DIFFERENTIABLE,
    NOT_LINEAR,
    ZERO_DERIVATIVE,
    Linear,
    Primitive,
    ShapeDtype,
    define_primitive,
    get_primitive,
    list_primitives,
)
from adplugin.eager.explain import explain_gradient
from adplugin.eager.function import function
from adplugin.eager.recording import EagerTensor
from adplugin.eager.tape import GradientTape
from adplugin.eager.variable import Variable
from adplugin.frontends.trace import trace
from adplugin.ir import operators as _operators  # noqa: F401  (Python operators on tensors)
from adplugin.ir.graph import (
    Graph,
    GraphError,
    Node,
    Tensor,
    constant,
    convert_to_tensor,
    get_default_graph,
    placeholder,
)
from adplugin.primitives.conversion import astype, stop_gradient
from adplugin.primitives.elementwise import (
    abs,
    add,
    cos,
    divide,
    exp,
    expm1,
    log,
    log1p,
    maximum,
    minimum,
    multiply,
    negative,
    power,
    sigmoid,
    sign,
    sin,
    sqrt,
    square,
    subtract,
    tanh,
)
from adplugin.primitives.indexing import take
from adplugin.primitives.linalg import dot, matmul
from adplugin.primitives.logic import (
    equal,
    greater,
    greater_equal,
    isfinite,
    less,
    less_equal,
    not_equal,
    where,
)
from adplugin.primitives.reductions import logsumexp, max, mean, sum
from adplugin.primitives.shape import (
    broadcast_to,
    concatenate,
    expand_dims,
    reshape,
    squeeze,
    transpose,
)
from adplugin.transforms.forward import forward_gradients
from adplugin.transforms.reverse import UnconnectedGradients, gradients, hessians
from adplugin.transforms.simplify import simplify

__all__ = [
    # extension and verification
    "NOT_DIFFERENTIABLE", "NOT_LINEAR", "ZERO_DERIVATIVE", "Linear", "Primitive", "ShapeDtype",
    "define_primitive", "get_primitive", "list_primitives", "extend", "testing",
    # ops
    "abs", "add", "astype", "broadcast_to", "concatenate", "cos", "divide", "dot", "equal",
    "exp", "expand_dims", "expm1", "greater", "greater_equal", "isfinite", "less", "less_equal",
    "log", "log1p", "logsumexp", "matmul", "max", "maximum", "mean", "minimum", "multiply",
    "negative", "not_equal", "power", "reshape", "sigmoid", "sign", "sin", "sqrt", "square",
    "squeeze", "stop_gradient", "subtract", "sum", "take", "tanh", "transpose", "where",
    # graphs
    "Graph", "GraphError", "Node", "Tensor", "constant", "get_default_graph", "placeholder",
    "trace", "gradients", "hessians", "forward_gradients", "simplify",
    # eager
    "Variable", "GradientTape", "EagerTensor", "UnconnectedGradients", "convert_to_tensor",
    "explain_gradient", "function", "optimizers",
]

from adplugin import optimizers  # noqa: E402  (needs optax)

# Checkpoint policies that recognize adplugin's dot; checked serialized exports.
from adplugin.lowering.serialized import deserialize_export, serialize_export  # noqa: E402
from adplugin.primitives.linalg import checkpoint_policies  # noqa: E402

__all__ += ["checkpoint_policies", "deserialize_export", "serialize_export"]

# Placement: device requests, the placer, partitioned (MPMD) runs across devices.
from adplugin import placement  # noqa: E402
from adplugin.placement import (  # noqa: E402
    Pipeline,
    PipelineError,
    PlacementError,
    Schedule,
    ScheduleError,
    colocate_with,
    device,
    get_soft_device_placement,
    gpipe,
    one_f_one_b,
    set_soft_device_placement,
)

__all__ += ["Pipeline", "PipelineError", "PlacementError", "Schedule", "ScheduleError",
            "colocate_with", "device", "get_soft_device_placement", "gpipe", "one_f_one_b",
            "placement", "set_soft_device_placement"]

# More NumPy / jax.nn ops: reductions, order statistics, cumulative ops, nn functions.
from adplugin.primitives import transcendental as _transcendental  # noqa: E402, F401
from adplugin.primitives.cumulative import cumprod, cumsum  # noqa: E402
from adplugin.primitives.elementwise import clip, erf, tan  # noqa: E402
from adplugin.primitives.nn import log_softmax, one_hot, relu, softmax  # noqa: E402
from adplugin.primitives.ordering import argmax, argmin, argsort, sort  # noqa: E402
from adplugin.primitives.reductions import min, prod, std, var  # noqa: E402
from adplugin.primitives.shape import stack  # noqa: E402

__all__ += ["argmax", "argmin", "argsort", "clip", "cumprod", "cumsum", "erf", "log_softmax",
            "min", "one_hot", "prod", "relu", "softmax", "sort", "std", "stack", "tan", "var"]

# Sharded execution: every collective of a compiled program, checked against predictions.
from adplugin import sharding  # noqa: E402
from adplugin.sharding import (  # noqa: E402
    Collectives,
    PredictedCollective,
    collectives,
    compare_collectives,
)

__all__ += ["Collectives", "PredictedCollective", "collectives", "compare_collectives",
            "sharding"]

# Sharding annotations: the mesh in scope, sharding constraints.
from adplugin.primitives.annotation import shard  # noqa: E402
from adplugin.sharding.mesh import MeshError, current_mesh, mesh  # noqa: E402

__all__ += ["MeshError", "current_mesh", "mesh", "shard"]

# The sharding planner: the inputs' shardings that make a step cheapest.
from adplugin.sharding.planner import ShardingPlan, plan_sharding  # noqa: E402

__all__ += ["ShardingPlan", "plan_sharding"]
