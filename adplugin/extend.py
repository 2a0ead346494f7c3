"""What a user needs to write the StableHLO lowering of their own primitive.

    from adplugin.extend import hlo
    softplus_p = ap.define_primitive("mylib.softplus", lowering=..., jvp=(...,), elementwise=True)

`hlo` is the StableHLO dialect's Python builder (`hlo.add`, `hlo.exponential`, ...); a lowering
rule gets `ctx` (with `ctx.out_type()` and `ctx.avals_in`) and the operands as IR values.
"""

from adplugin._jax_adapter import (
    LoweringContext as LoweringContext,
)
from adplugin._jax_adapter import (
    dense_int_array as dense_int_array,
)
from adplugin._jax_adapter import (
    hlo as hlo,
)
from adplugin._jax_adapter import (
    ir as ir,
)
from adplugin._jax_adapter import (
    ir_constant as ir_constant,
)
from adplugin._jax_adapter import (
    scalar_ir_type as scalar_ir_type,
)
