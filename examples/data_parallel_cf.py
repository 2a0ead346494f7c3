"""Data-parallel collaborative filtering on MovieLens ratings: users split over a device mesh.

The collaborative-filtering cost of `movielens.cofi_cost` (movie features X, user weights W,
user biases b; J = ½ Σ R ⊙ (X Wᵀ + b − Y)² + λ/2 (Σ X² + Σ W²)) is trained data parallel over
a 1-D mesh "data" of `--num_devices` host devices, with the sharding API:

    mesh = jax.make_mesh((n,), ("data",))
    with ap.mesh(mesh):
        W = ap.Variable(W0, sharding=P("data", None))   # users x features: a slice per device
        b = ap.Variable(b0, sharding=P(None, "data"))   # 1 x users
        X = ap.Variable(X0)                              # movies x features: replicated
        Y, R = (jax.device_put(a, NamedSharding(mesh, P(None, "data"))) for a in (Y, R))

Each device holds the ratings Y and indicator R of its slice of the users (columns), and the
weights and biases of those users; the predictions X Wᵀ + b, the error and the gradients of W
and b stay on the device of their users. The movie features X are replicated: every device
computes its users' part of dJ/dX, and the parts are summed over "data" (an all-reduce of a
movies x features buffer, plus the scalar all-reduces of the cost's sums). The optimizer state
(Adam's moments) is sharded like its variable.

The number of users is padded up to a multiple of the device count with users who rated
nothing (all-zero columns of R) and whose weights and bias start (and so stay) at zero: they
add nothing to the cost or to any gradient, so the padded, sharded model is the same model.

The script
1. loads the ratings (ml-latest-small by default, the loader of collaborative_filtering.py;
   `--small` uses the shipped course practice set) and normalizes them per movie;
2. trains `--steps` Adam steps with `ap.GradientTape` inside `@ap.function`, sharded over the
   mesh, then the same model unpadded and unsharded on one device, and prints both losses
   (they agree to rtol 1e-4);
3. builds the same cost and its gradients (`ap.gradients`) as a graph with sharded
   placeholders, prints the head of `g.to_text` (types such as `f32[4778,444@data]`), the
   collectives the propagated shardings predict per node, the collectives XLA made
   (`ap.collectives` of the compiled program), and their comparison (which must be ok);
4. ends with a summary line.

    python examples/data_parallel_cf.py [--num_devices 8] [--axis_types auto|explicit]
        [--steps 100] [--features 100] [--learning_rate 0.1] [--lambda_ 1.0] [--seed 1234]
        [--data DIR] [--small]

--num_devices forces that many host (CPU) devices through XLA_FLAGS before JAX starts; with
one device the mesh has one slice of users and the program has no collectives.
--axis_types: the mesh axis type, `auto` (XLA's partitioner propagates the shardings) or
`explicit` (shardings are part of JAX's types).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    from _cli import force_host_devices

    force_host_devices(sys.argv, default=8)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # host devices, whatever else is installed

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from tqdm import tqdm  # noqa: E402

import adplugin as ap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import movielens  # noqa: E402

AXIS = "data"
USERS = P(AXIS, None)  # W: users x features, a slice of users per device
COLUMNS = P(None, AXIS)  # Y, R (movies x users) and b (1 x users): split over users
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
TEXT_HEAD, TEXT_TAIL = 13, 8  # lines of the graph's text printed: the cost, the gradients


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_integer("num_devices", 8, "host (CPU) devices to force before JAX starts; the "
                         "mesh 'data' spans them", flag_values=fv)
    flags.DEFINE_enum("axis_types", "auto", sorted(AXIS_TYPES), "the mesh axis type",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 100, "Adam steps", flag_values=fv)
    flags.DEFINE_integer("features", 100, "number of features per movie and user",
                         flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.1, "Adam learning rate", flag_values=fv)
    flags.DEFINE_float("lambda_", 1.0, "regularization strength λ", flag_values=fv)
    flags.DEFINE_integer("seed", 1234, "seed of the random initial X, W, b", flag_values=fv)
    flags.DEFINE_string("data", str(movielens.DEFAULT_ML_LATEST_SMALL),
                        "MovieLens data: ml-latest-small (ratings.csv) or course-small "
                        "(course-small.npz or small_movies_Y.csv)", flag_values=fv)
    flags.DEFINE_bool("small", False, "a quick run (tests): the shipped course practice set "
                      f"({movielens.DEFAULT_COURSE_SMALL.name}) instead of --data",
                      flag_values=fv)


# --- the data and the parameters ------------------------------------------------------------------

def load_data(path: str | Path = movielens.DEFAULT_ML_LATEST_SMALL) -> dict[str, np.ndarray]:
    """The ratings normalized per movie (Y) and the indicator R, movies x users, float32."""
    data = movielens.load(path)
    Ynorm, _ = movielens.normalize_ratings(data["Y"], data["R"])
    return {"Y": Ynorm.astype(np.float32), "R": data["R"].astype(np.float32)}


def pad_users(data: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Y and R with all-zero user columns appended, so the users divide into `multiple`."""
    n_users = data["Y"].shape[1]
    extra = -n_users % multiple
    return {k: np.pad(v, ((0, 0), (0, extra))) for k, v in data.items()}


def init_params(n_movies: int, n_users: int, features: int, seed: int = 1234,
                padded_users: int | None = None) -> dict[str, np.ndarray]:
    """Random X, W, b (standard normal, as collaborative_filtering.py); with `padded_users`,
    W and b get zero rows / columns for the padding users (zero stays zero: no gradient)."""
    rng = np.random.default_rng(seed)
    X, W, b = (rng.standard_normal(shape, np.float32) for shape in
               ((n_movies, features), (n_users, features), (1, n_users)))
    extra = (padded_users or n_users) - n_users
    return {"X": X, "W": np.pad(W, ((0, extra), (0, 0))), "b": np.pad(b, ((0, 0), (0, extra)))}


def make_mesh(num_devices: int | None = None, axis_types: str = "auto") -> Any:
    """A 1-D mesh "data" over the first `num_devices` devices (all of them by default)."""
    n = num_devices or len(jax.devices())
    return jax.make_mesh((n,), (AXIS,), axis_types=(AXIS_TYPES[axis_types],),
                         devices=jax.devices()[:n])


# --- training: a tape step compiled with ap.function ----------------------------------------------

def train(data: dict[str, np.ndarray], params: dict[str, np.ndarray], steps: int,
          learning_rate: float = 0.1, lambda_: float = 1.0, mesh: Any = None
          ) -> dict[str, Any]:
    """`steps` Adam steps of `movielens.cofi_cost`; sharded over `mesh`'s users when given.

    Returns the loss before each step, the final loss, the trained values and shardings."""
    sharded = mesh is not None

    def build() -> dict[str, Any]:
        X = ap.Variable(params["X"], name="X")  # replicated (or on the one device)
        W = ap.Variable(params["W"], sharding=USERS if sharded else None, name="W")
        b = ap.Variable(params["b"], sharding=COLUMNS if sharded else None, name="b")
        if sharded:
            Y, R = (jax.device_put(data[k], NamedSharding(mesh, COLUMNS)) for k in "YR")
        else:
            Y, R = (jax.device_put(data[k]) for k in "YR")
        opt = ap.optimizers.Adam(learning_rate=learning_rate)
        variables = [X, W, b]

        @ap.function
        def step(Y: Any, R: Any) -> Any:
            with ap.GradientTape() as tape:
                cost = movielens.cofi_cost(X, W, b, Y, R, lambda_)
            opt.apply_gradients(zip(tape.gradient(cost, variables), variables))
            return cost

        label = "sharded" if sharded else "one device"
        losses = [float(step(Y, R)) for _ in tqdm(range(steps), desc=label, leave=False)]
        final = float(movielens.cofi_cost(X.value, W.value, b.value, Y, R, lambda_))
        return {"losses": losses, "final_loss": final, "X": X.numpy(), "W": W.numpy(),
                "b": b.numpy(), "shardings": {v.name: v.value.sharding for v in variables},
                "optimizer": opt, "variables": variables}

    if not sharded:
        return build()
    with ap.mesh(mesh):
        return build()


# --- the same cost as a sharded graph -------------------------------------------------------------

def build_graph(mesh: Any, n_movies: int, n_users: int, features: int, lambda_: float
                ) -> dict[str, Any]:
    """J and dJ/dX, dJ/dW, dJ/db (`ap.gradients`) with Y, R, W, b split over users, X not."""
    g = ap.Graph()
    with ap.mesh(mesh), g:
        Y = ap.placeholder((n_movies, n_users), sharding=COLUMNS, name="Y")
        R = ap.placeholder((n_movies, n_users), sharding=COLUMNS, name="R")
        X = ap.placeholder((n_movies, features), name="X")
        W = ap.placeholder((n_users, features), sharding=USERS, name="W")
        b = ap.placeholder((1, n_users), sharding=COLUMNS, name="b")
        J = movielens.cofi_cost(X, W, b, Y, R, lambda_)
        dX, dW, db = ap.gradients(J, [X, W, b])
    return {"graph": g, "Y": Y, "R": R, "X": X, "W": W, "b": b, "J": J, "dX": dX, "dW": dW,
            "db": db, "outputs": [J, dX, dW, db]}


def check_collectives(mesh: Any, data: dict[str, np.ndarray], params: dict[str, np.ndarray],
                      lambda_: float = 1.0) -> dict[str, Any]:
    """The graph's text, predicted and measured collectives, their comparison, and the values
    of J and its gradients from the compiled sharded program."""
    n_movies, n_users = data["Y"].shape
    m = build_graph(mesh, n_movies, n_users, params["X"].shape[1], lambda_)
    g, outs = m["graph"], m["outputs"]
    feed = {m[k]: data[k] for k in "YR"} | {m[k]: params[k] for k in ("X", "W", "b")}
    with ap.mesh(mesh):
        text = g.to_text(outs)
        predicted = g.predicted_collectives(outs)
    with ap.mesh(mesh):
        measured = ap.collectives(g.lower(outs, feed).compile())
        values = g.run(outs, feed)
    check = ap.compare_collectives(predicted, measured)
    allreduce = sum(c.nbytes for c in measured if c.kind == "all-reduce")
    return {"model": m, "text": text, "predicted": predicted, "measured": measured,
            "check": check, "allreduce_bytes": allreduce, "values": values}


def head_and_tail(text: str, head: int = TEXT_HEAD, tail: int = TEXT_TAIL) -> str:
    """The first and last lines of a graph's text (the cost's nodes, the gradients' last)."""
    lines = text.splitlines()
    if len(lines) <= head + tail:
        return text
    return "\n".join(lines[:head] + [f"    ... ({len(lines) - head - tail} more lines)"]
                     + lines[-tail:])


# --- the tour -------------------------------------------------------------------------------------

def tour(data: dict[str, np.ndarray], *, num_devices: int | None = None,
         axis_types: str = "auto", steps: int = 100, features: int = 100,
         learning_rate: float = 0.1, lambda_: float = 1.0, seed: int = 1234,
         emit: Callable[[str], None] = print) -> dict[str, Any]:
    mesh = make_mesh(num_devices, axis_types)
    n = mesh.devices.size
    n_movies, n_users = data["Y"].shape
    padded = pad_users(data, n)
    n_padded = padded["Y"].shape[1]
    emit(f"mesh: {n} device(s) along {AXIS!r} ({axis_types}); {n_users} users"
         + (f", padded to {n_padded} with {n_padded - n_users} user(s) who rated nothing"
            if n_padded != n_users else "")
         + f", {n_padded // n} per device")
    params = init_params(n_movies, n_users, features, seed, padded_users=n_padded)
    single_params = init_params(n_movies, n_users, features, seed)

    emit(f"\n== {steps} Adam steps (learning rate {learning_rate:g}), tape + ap.function ==")
    sharded = train(padded, params, steps, learning_rate, lambda_, mesh)
    single = train(data, single_params, steps, learning_rate, lambda_)
    every = max(1, steps // 8)
    for k in list(range(0, steps, every)) + [steps]:
        got = sharded["losses"][k] if k < steps else sharded["final_loss"]
        want = single["losses"][k] if k < steps else single["final_loss"]
        emit(f"{'step ' + str(k) if k < steps else 'final':>10}: loss sharded {got:.6g}, "
             f"single device {want:.6g}")
    agree = bool(np.allclose(sharded["losses"] + [sharded["final_loss"]],
                             single["losses"] + [single["final_loss"]], rtol=1e-4, atol=0))
    pad_weights = float(np.abs(sharded["W"][n_users:]).max(initial=0.0))
    emit(f"losses agree (rtol 1e-4): {agree}; padding users' weights stay {pad_weights:g}")
    for name, s in sharded["shardings"].items():
        emit(f"  {name}: {s.spec} on {len(s.device_set)} device(s)")

    emit("\n== the same cost as a graph with sharded placeholders ==")
    c = check_collectives(mesh, padded, params, lambda_)
    emit(head_and_tail(c["text"]))
    J0 = float(c["values"][0])
    emit(f"graph cost at the initial parameters: {J0:.8g} (the first tape step's: "
         f"{sharded['losses'][0]:.8g})")
    emit("\npredicted collectives (from the propagated shardings):")
    for p in c["predicted"]:
        emit(f"  {p.kind} over {','.join(p.axes)}: {p.nbytes} bytes at node {p.node}")
    if not c["predicted"]:
        emit("  none (one device: nothing to exchange)")
    emit("\nmeasured collectives (the compiled HLO):")
    emit(c["measured"].table())
    emit("\npredicted vs measured:")
    emit(c["check"].table())

    out = {"devices": n, "n_users": n_users, "n_padded": n_padded,
           "loss_sharded": sharded["final_loss"], "loss_single": single["final_loss"],
           "losses_sharded": sharded["losses"], "losses_single": single["losses"],
           "agree": agree, "predicted_ok": c["check"].ok,
           "allreduce_bytes": c["allreduce_bytes"], "graph_loss_initial": J0,
           "sharded": sharded, "single": single, "collectives": c}
    emit(f"\nsummary: devices={n} loss_sharded={out['loss_sharded']:.8g} "
         f"loss_single={out['loss_single']:.8g} agree={agree} predicted_ok={out['predicted_ok']} "
         f"allreduce_bytes={out['allreduce_bytes']} users={n_users} padded_users={n_padded} "
         f"axis_types={axis_types}")
    return out


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    path = movielens.DEFAULT_COURSE_SMALL if F.small else F.data
    data = load_data(path)
    n_movies, n_users = data["Y"].shape
    print(f"MovieLens ratings ({Path(path).name}): {n_movies} movies x {n_users} users, "
          f"{int(data['R'].sum())} ratings; {len(jax.devices())} {jax.devices()[0].platform} "
          "device(s)")
    r = tour(data, num_devices=F.num_devices, axis_types=F.axis_types, steps=F.steps,
             features=F.features, learning_rate=F.learning_rate, lambda_=F.lambda_,
             seed=F.seed)
    if not (r["agree"] and r["predicted_ok"]):
        sys.exit("the sharded run disagrees with the single-device run, or the collectives "
                 "differ from the prediction")


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
