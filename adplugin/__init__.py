"""adplugin: an automatic-differentiation toolchain that plugs into JAX.

`import adplugin as ap`; see README.md and docs/ for the tour.
"""

from adplugin._primitive import (
    NOT_DIFFERENTIABLE as NOT_DIFFERENTIABLE,
    NOT_LINEAR as NOT_LINEAR,
    ZERO_DERIVATIVE as ZERO_DERIVATIVE,
    Linear as Linear,
    Primitive as Primitive,
    ShapeDtype as ShapeDtype,
    define_primitive as define_primitive,
    get_primitive as get_primitive,
    list_primitives as list_primitives,
)
from adplugin import extend as extend, testing as testing
from adplugin.primitives.conversion import astype as astype, stop_gradient as stop_gradient
from adplugin.primitives.elementwise import (
    abs as abs,
    add as add,
    cos as cos,
    divide as divide,
    exp as exp,
    expm1 as expm1,
    log as log,
    log1p as log1p,
    maximum as maximum,
    minimum as minimum,
    multiply as multiply,
    negative as negative,
    power as power,
    sigmoid as sigmoid,
    sign as sign,
    sin as sin,
    sqrt as sqrt,
    square as square,
    subtract as subtract,
    tanh as tanh,
)
from adplugin.primitives.logic import (
    equal as equal,
    greater as greater,
    greater_equal as greater_equal,
    isfinite as isfinite,
    less as less,
    less_equal as less_equal,
    not_equal as not_equal,
    where as where,
)
from adplugin.primitives.shape import (
    broadcast_to as broadcast_to,
    concatenate as concatenate,
    expand_dims as expand_dims,
    reshape as reshape,
    squeeze as squeeze,
    transpose as transpose,
)
from adplugin.primitives.reductions import (
    logsumexp as logsumexp,
    max as max,
    mean as mean,
    sum as sum,
)
from adplugin.primitives.linalg import dot as dot, matmul as matmul
from adplugin.primitives.indexing import take as take
from adplugin.ir.graph import (  # noqa: E402
    Graph as Graph,
    Node as Node,
    Tensor as Tensor,
    constant as constant,
    get_default_graph as get_default_graph,
    placeholder as placeholder,
)
from adplugin.ir import operators as _operators  # noqa: E402,F401
from adplugin.transforms.forward import forward_gradients as forward_gradients  # noqa: E402
from adplugin.transforms.reverse import gradients as gradients, hessians as hessians  # noqa: E402
from adplugin.transforms.simplify import simplify as simplify  # noqa: E402
