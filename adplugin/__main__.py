"""`python -m adplugin`: a tour of the pipeline on a small model, printed step by step.

adplugin's primitives under jax.grad / jit / vmap / hessian, the jaxpr they form, the StableHLO
they lower to, and a run sharded over host devices that agrees with the single-device one.
"""

from __future__ import annotations

import os
from typing import Any

# host devices for the sharded step; must be set before JAX starts its CPU backend
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import adplugin as ap  # noqa: E402


def seed_polynomial(a: jax.Array, b: jax.Array) -> jax.Array:
    """f = 2ab^2 + 3a^2 b."""
    return ap.add(ap.multiply(2.0, ap.multiply(a, ap.square(b))),
                  ap.multiply(3.0, ap.multiply(ap.square(a), b)))


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def main() -> None:
    _section("adplugin primitives registered into JAX")
    print(", ".join(ap.list_primitives()))

    _section("seed polynomial f = 2ab^2 + 3a^2b at a=2, b=3")
    a, b = jnp.float32(2.0), jnp.float32(3.0)
    df_da = jax.grad(seed_polynomial, 0)
    d2f = jax.grad(df_da, 1)
    print(f"f = {seed_polynomial(a, b)}, df/da = {df_da(a, b)}, d2f/dadb = {d2f(a, b)}")
    print(jax.make_jaxpr(df_da)(a, b))

    _section("a logistic-regression loss: grad, jit, vmap, hessian")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (rng.random(64) > 0.5).astype(np.float32)
    w = np.zeros(5, np.float32)
    grad = jax.jit(jax.grad(_loss))
    for _ in range(100):
        w = w - 0.5 * grad(w, x, y)
    print(f"loss after 100 steps: {float(_loss(w, x, y)):.4f}")
    per_example = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(w, x[:, None], y[:, None])
    print(f"per-example gradients (vmap): shape {per_example.shape}")
    print(f"hessian eigenvalues: {np.linalg.eigvalsh(jax.hessian(_loss)(w, x, y)).round(4)}")

    _section("lowered StableHLO of the gradient")
    print(jax.jit(jax.grad(_loss)).lower(w, x, y).as_text())

    _section(f"sharded over {len(jax.devices())} host devices")
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch", None)))
    ys = jax.device_put(y, NamedSharding(mesh, PartitionSpec("batch")))
    sharded = grad(w, xs, ys)
    print(f"sharded gradient equals unsharded: "
          f"{bool(np.allclose(sharded, grad(w, x, y), atol=1e-6))}")


def _loss(w: Any, x: Any, y: Any) -> Any:
    # binary cross-entropy from logits: log(1 + e^z) - y z, with a stable log(1 + e^z)
    z = ap.matmul(x, w)
    zeros = ap.multiply(z, 0.0)
    softplus = ap.logsumexp(ap.concatenate([ap.expand_dims(zeros, 0), ap.expand_dims(z, 0)]),
                            axis=0)
    return ap.mean(ap.subtract(softplus, ap.multiply(y, z)))


if __name__ == "__main__":
    main()
