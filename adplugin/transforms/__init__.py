"""Pure graph transforms: reverse mode, forward mode, Hessians, simplification."""
