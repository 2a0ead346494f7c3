"""Graph -> StableHLO -> compiled XLA executable, cached by graph structure; execution."""
