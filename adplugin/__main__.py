"""`python -m adplugin [OUT_DIR]`: a tour of the whole pipeline, printed step by step.

1. the seed: f = 2ab^2 + 3a^2 b at a=2, b=3 gives 72, df/da = 54, d2f/da db = 24, computed
   three ways (JAX transformations, a derived gradient graph, a GradientTape), and the
   gradient graph drawn to OUT_DIR/seed_gradient.svg (default: ./adplugin_demo);
2. adplugin's primitives inside JAX: jit, vmap, hessian, the jaxpr and the StableHLO;
3. the derived gradient graph, simplified, as text;
4. a jax.numpy function traced into a graph and differentiated by adplugin;
5. eager training with a GradientTape and an optax optimizer on the shipped MovieLens data
   (when run from a source checkout) or on a synthetic regression;
6. a gradient step sharded over host devices that agrees with the single-device one.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

# host devices for the sharded step; must be set before JAX starts its CPU backend
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import adplugin as ap  # noqa: E402
from adplugin.ir.svg import to_svg  # noqa: E402

RATINGS = Path(__file__).resolve().parent.parent / "examples/data/ml-latest-small/ratings.csv"


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def seed_polynomial(a: Any, b: Any) -> Any:
    """f = 2ab^2 + 3a^2 b, written with ap.* ops (works on arrays and on graph tensors)."""
    return 2 * a * b**2 + 3 * a**2 * b if isinstance(a, ap.Tensor) else ap.add(
        ap.multiply(2.0, ap.multiply(a, ap.square(b))),
        ap.multiply(3.0, ap.multiply(ap.square(a), b)))


def logistic_loss(w: Any, x: Any, y: Any) -> Any:
    """Binary cross-entropy from logits: softplus(z) - y z, softplus via a stable logsumexp."""
    z = ap.matmul(x, w)
    both = ap.concatenate([ap.expand_dims(ap.multiply(z, 0.0), 0), ap.expand_dims(z, 0)])
    return ap.mean(ap.subtract(ap.logsumexp(both, axis=0), ap.multiply(y, z)))


def seed(out_dir: Path) -> None:
    _section("1. f = 2ab^2 + 3a^2 b at a=2, b=3: f, df/da, d2f/da db, three ways")
    a, b = jnp.float32(2.0), jnp.float32(3.0)
    df_da = jax.grad(seed_polynomial, 0)
    values = [seed_polynomial(a, b), df_da(a, b), jax.grad(df_da, 1)(a, b)]
    print("JAX transformations on ap.* ops:  ", _three(values))

    with ap.Graph("seed") as g:
        A, B = ap.placeholder((), name="a"), ap.placeholder((), name="b")
        F = seed_polynomial(A, B)
        (dF,) = ap.gradients(F, [A])
        assert dF is not None  # f depends on a
        (d2F,) = ap.gradients(dF, [B])
    print("a graph and its derived gradients:", _three(g.run([F, dF, d2F], {A: 2.0, B: 3.0})))

    va, vb = ap.Variable(2.0), ap.Variable(3.0)
    with ap.GradientTape() as outer:
        with ap.GradientTape() as inner:
            f = seed_polynomial(va, vb)
        first = inner.gradient(f, va)
    print("GradientTapes, one nested:        ", _three([f, first, outer.gradient(first, vb)]))

    out_dir.mkdir(parents=True, exist_ok=True)
    picture = out_dir / "seed_gradient.svg"
    picture.write_text(to_svg(g, [F, dF]))
    print(f"the graph of f and df/da (inputs yellow, forward ops blue, derivative ops red): "
          f"{picture}")


def _three(values: Any) -> str:
    return ", ".join(f"{float(v):g}" for v in values)


def jax_transformations() -> None:
    _section("2. adplugin primitives inside JAX")
    print(f"{len(ap.list_primitives())} primitives, each with its abstract evaluation, "
          "lowering, JVP, transpose, batching and sharding rules (ap.list_primitives())")
    a, b = jnp.float32(2.0), jnp.float32(3.0)
    print("the jaxpr of df/da:")
    print(jax.make_jaxpr(jax.grad(seed_polynomial, 0))(a, b))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (rng.random(64) > 0.5).astype(np.float32)
    w = np.zeros(5, np.float32)
    grad = jax.jit(jax.grad(logistic_loss))
    for _ in range(100):
        w = w - 0.5 * grad(w, x, y)
    print(f"logistic regression, 100 jitted gradient steps: loss {logistic_loss(w, x, y):.4f}")
    per_example = jax.vmap(jax.grad(logistic_loss), in_axes=(None, 0, 0))(w, x[:, None], y[:, None])
    print(f"per-example gradients (vmap): {per_example.shape}; hessian eigenvalues "
          f"{np.linalg.eigvalsh(jax.hessian(logistic_loss)(w, x, y)).round(3)}")
    text = jax.jit(jax.grad(logistic_loss)).lower(w, x, y).as_text()
    ops = sorted(set(re.findall(r"stablehlo\.\w+", text)))
    print(f"lowered gradient: {len(text.splitlines())} lines of StableHLO using {', '.join(ops)}")


def graphs() -> None:
    _section("3. the derived gradient graph, simplified")
    with ap.Graph("seed") as g:
        a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b")
        f = seed_polynomial(a, b)
        (df_da,) = ap.gradients(f, [a])
        assert df_da is not None
        (d2f,) = ap.gradients(df_da, [b])
    small, mapping = ap.simplify(g, [f, df_da])
    print(small.to_text([mapping[f.node.id], mapping[df_da.node.id]]))
    print("run:", [float(v) for v in g.run([f, df_da, d2f], {a: 2.0, b: 3.0})])

    _section("4. a jax.numpy function traced into a graph")

    def mlp(w1: Any, w2: Any, x: Any) -> Any:
        return jnp.sum(jax.nn.softplus(jnp.tanh(x @ w1) @ w2))

    rng = np.random.default_rng(1)
    args = (rng.standard_normal((3, 4)).astype(np.float32),
            rng.standard_normal((4, 2)).astype(np.float32),
            rng.standard_normal((5, 3)).astype(np.float32))
    traced = ap.trace(mlp, *args)
    (gw1,) = ap.gradients(traced.outputs[0], [traced.inputs[0]])
    got = traced.graph.run(gw1, dict(zip(traced.inputs, args)))
    print(f"{len(traced.graph.nodes)} nodes; ap.gradients equals jax.grad: "
          f"{np.allclose(got, jax.grad(mlp)(*args), atol=1e-5)}")


def eager_training() -> None:
    _section("5. eager training: GradientTape + Adam")
    if RATINGS.exists():
        data = np.genfromtxt(RATINGS, delimiter=",", skip_header=1, usecols=(0, 1, 2))
        users, movies = np.unique(data[:, 0], return_inverse=True)[1], np.unique(
            data[:, 1], return_inverse=True)[1]
        Y = np.zeros((movies.max() + 1, users.max() + 1), np.float32)
        Y[movies, users] = data[:, 2]
        print(f"MovieLens ml-latest-small: {len(data)} ratings, {Y.shape[0]} movies x "
              f"{Y.shape[1]} users")
    else:
        Y = np.random.default_rng(2).integers(0, 6, (500, 80)).astype(np.float32)
        print("synthetic ratings (the shipped MovieLens copy is in a source checkout)")
    R = (Y > 0).astype(np.float32)
    mean = Y.sum(1, keepdims=True) / np.maximum(R.sum(1, keepdims=True), 1)
    Ynorm = (Y - mean) * R
    rng = np.random.default_rng(3)
    X = ap.Variable(rng.standard_normal((Y.shape[0], 20)).astype(np.float32) * 0.1, name="X")
    W = ap.Variable(rng.standard_normal((Y.shape[1], 20)).astype(np.float32) * 0.1, name="W")
    b = ap.Variable(np.zeros((1, Y.shape[1]), np.float32), name="b")
    opt = ap.optimizers.Adam(learning_rate=0.1)
    start = time.perf_counter()
    for step in range(100):
        with ap.GradientTape() as tape:
            err = (ap.matmul(X, ap.transpose(W)) + b - Ynorm) * R
            cost = 0.5 * ap.sum(ap.square(err)) + 0.5 * (ap.sum(ap.square(X)) +
                                                          ap.sum(ap.square(W)))
        opt.apply_gradients(zip(tape.gradient(cost, [X, W, b]), [X, W, b]))
        if step % 25 == 0 or step == 99:
            print(f"  step {step:3d}: cost {float(cost):12.1f}")
    print(f"100 tape steps in {time.perf_counter() - start:.2f} s (the recorded structure is "
          "compiled once and reused by every step)")


def sharded() -> None:
    _section(f"6. a gradient step sharded over {len(jax.devices())} host devices")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (rng.random(64) > 0.5).astype(np.float32)
    w = rng.standard_normal(5).astype(np.float32)
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch", None)))
    ys = jax.device_put(y, NamedSharding(mesh, PartitionSpec("batch")))
    grad = jax.jit(jax.grad(logistic_loss))
    same = np.allclose(grad(w, xs, ys), grad(w, x, y), atol=1e-6)
    print(f"input sharding {xs.sharding.spec}; sharded gradient equals unsharded: {same}")


def main() -> None:
    seed(Path(sys.argv[1] if len(sys.argv) > 1 else "adplugin_demo"))
    jax_transformations()
    graphs()
    eager_training()
    sharded()


if __name__ == "__main__":
    main()
