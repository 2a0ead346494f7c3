"""The graph IR: `Graph`, `Node`, `Tensor`, printing and verification."""
