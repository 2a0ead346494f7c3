"""adplugin: an automatic-differentiation toolchain that plugs into JAX.

`import adplugin as ap`; see README.md and docs/ for the tour.
"""

from adplugin import extend as extend
from adplugin import testing as testing
from adplugin._primitive import (
    NOT_DIFFERENTIABLE as NOT_DIFFERENTIABLE,
)
from adplugin._primitive import (
    NOT_LINEAR as NOT_LINEAR,
)
from adplugin._primitive import (
    ZERO_DERIVATIVE as ZERO_DERIVATIVE,
)
from adplugin._primitive import (
    Linear as Linear,
)
from adplugin._primitive import (
    Primitive as Primitive,
)
from adplugin._primitive import (
    ShapeDtype as ShapeDtype,
)
from adplugin._primitive import (
    define_primitive as define_primitive,
)
from adplugin._primitive import (
    get_primitive as get_primitive,
)
from adplugin._primitive import (
    list_primitives as list_primitives,
)
from adplugin.frontends.trace import trace as trace  # noqa: E402
from adplugin.ir import operators as _operators  # noqa: E402,F401
from adplugin.ir.graph import (  # noqa: E402
    Graph as Graph,
)
from adplugin.ir.graph import (
    GraphError as GraphError,
)
from adplugin.ir.graph import (
    Node as Node,
)
from adplugin.ir.graph import (
    Tensor as Tensor,
)
from adplugin.ir.graph import (
    constant as constant,
)
from adplugin.ir.graph import (
    get_default_graph as get_default_graph,
)
from adplugin.ir.graph import (
    placeholder as placeholder,
)
from adplugin.primitives.conversion import astype as astype
from adplugin.primitives.conversion import stop_gradient as stop_gradient
from adplugin.primitives.elementwise import (
    abs as abs,
)
from adplugin.primitives.elementwise import (
    add as add,
)
from adplugin.primitives.elementwise import (
    cos as cos,
)
from adplugin.primitives.elementwise import (
    divide as divide,
)
from adplugin.primitives.elementwise import (
    exp as exp,
)
from adplugin.primitives.elementwise import (
    expm1 as expm1,
)
from adplugin.primitives.elementwise import (
    log as log,
)
from adplugin.primitives.elementwise import (
    log1p as log1p,
)
from adplugin.primitives.elementwise import (
    maximum as maximum,
)
from adplugin.primitives.elementwise import (
    minimum as minimum,
)
from adplugin.primitives.elementwise import (
    multiply as multiply,
)
from adplugin.primitives.elementwise import (
    negative as negative,
)
from adplugin.primitives.elementwise import (
    power as power,
)
from adplugin.primitives.elementwise import (
    sigmoid as sigmoid,
)
from adplugin.primitives.elementwise import (
    sign as sign,
)
from adplugin.primitives.elementwise import (
    sin as sin,
)
from adplugin.primitives.elementwise import (
    sqrt as sqrt,
)
from adplugin.primitives.elementwise import (
    square as square,
)
from adplugin.primitives.elementwise import (
    subtract as subtract,
)
from adplugin.primitives.elementwise import (
    tanh as tanh,
)
from adplugin.primitives.indexing import take as take
from adplugin.primitives.linalg import dot as dot
from adplugin.primitives.linalg import matmul as matmul
from adplugin.primitives.logic import (
    equal as equal,
)
from adplugin.primitives.logic import (
    greater as greater,
)
from adplugin.primitives.logic import (
    greater_equal as greater_equal,
)
from adplugin.primitives.logic import (
    isfinite as isfinite,
)
from adplugin.primitives.logic import (
    less as less,
)
from adplugin.primitives.logic import (
    less_equal as less_equal,
)
from adplugin.primitives.logic import (
    not_equal as not_equal,
)
from adplugin.primitives.logic import (
    where as where,
)
from adplugin.primitives.reductions import (
    logsumexp as logsumexp,
)
from adplugin.primitives.reductions import (
    max as max,
)
from adplugin.primitives.reductions import (
    mean as mean,
)
from adplugin.primitives.reductions import (
    sum as sum,
)
from adplugin.primitives.shape import (
    broadcast_to as broadcast_to,
)
from adplugin.primitives.shape import (
    concatenate as concatenate,
)
from adplugin.primitives.shape import (
    expand_dims as expand_dims,
)
from adplugin.primitives.shape import (
    reshape as reshape,
)
from adplugin.primitives.shape import (
    squeeze as squeeze,
)
from adplugin.primitives.shape import (
    transpose as transpose,
)
from adplugin.transforms.forward import forward_gradients as forward_gradients  # noqa: E402
from adplugin.transforms.reverse import gradients as gradients  # noqa: E402
from adplugin.transforms.reverse import hessians as hessians
from adplugin.transforms.simplify import simplify as simplify  # noqa: E402
