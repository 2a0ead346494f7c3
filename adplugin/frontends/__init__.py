"""Ways to build graphs: operator overloading on tensors and `ap.trace` of JAX functions."""
