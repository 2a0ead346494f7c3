"""TensorFlow-1-style device placement on MovieLens ratings: `with ap.device("/device:CPU:1"):`.

The collaborative-filtering cost of the practice set (movies x users ratings Y, indicator R,
normalized per movie) is built as a graph, in TensorFlow 1's way of placing it:

    with ap.device("/device:CPU:0"):    # the movie side: movie features X, the prediction
        ...                              #   X W^T + b, the squared error, sum(X^2)
    with ap.device("/device:CPU:1"):    # the user side: user weights W, bias b, sum(W^2)
        ...
    with ap.device("/device:GPU:0"):    # a metric (RMSE) asks for a GPU

The script prints where every node runs and why (`g.placement(fetches).table()`): the requests,
what the placer inherited, the gradient nodes of `ap.gradients` colocated with the forward
nodes they come from, and the GPU request soft-placed on a CPU-only machine. With soft
placement off (`ap.set_soft_device_placement(False)`) the same run stops with the placer's
readable error. Then the partition (one subprogram per device and stage, the transfers between
them and their bytes), gradient-descent steps with `g.run` on the placed graph next to the same
steps on the graph without requests (the losses agree to float32 rounding), and the placed
graph drawn as SVG with one band per device (and as Graphviz DOT, rendered when `dot` is
installed). A summary line ends the output.

    python examples/placement_tf_style.py [--num_devices 2] [--steps 40] [--svg FILE]
        [--features 10] [--learning_rate 0.001] [--lambda_ 1.0] [--seed 0] [--small]

--num_devices forces that many host (CPU) devices through XLA_FLAGS before JAX starts. With one
device, "/device:CPU:1" does not exist either: it is soft-placed on cpu:0 and the same program
runs on one device.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    from _cli import force_host_devices

    force_host_devices(sys.argv, default=2)

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

import adplugin as ap  # noqa: E402
from adplugin.ir.printing import render  # noqa: E402
from adplugin.ir.svg import to_svg  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import movielens  # noqa: E402

MOVIE_DEVICE = "/device:CPU:0"
USER_DEVICE = "/device:CPU:1"
METRIC_DEVICE = "/device:GPU:0"  # soft-placed on a machine without a GPU
DEFAULT_SVG = Path(tempfile.gettempdir()) / "adplugin_demo" / "placement_tf_style.svg"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_integer("num_devices", 2, "host (CPU) devices to force before JAX starts",
                         flag_values=fv)
    flags.DEFINE_integer("steps", 40, "gradient-descent steps", flag_values=fv)
    flags.DEFINE_string("svg", str(DEFAULT_SVG), "where to write the placed graph as SVG (a "
                        ".dot file is written next to it)", flag_values=fv)
    flags.DEFINE_integer("features", 10, "features per movie and per user", flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.001, "gradient-descent step size", flag_values=fv)
    flags.DEFINE_float("lambda_", 1.0, "L2 regularization", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the initial features", flag_values=fv)
    flags.DEFINE_string("course_small", str(movielens.DEFAULT_COURSE_SMALL),
                        "the practice set: its CSV directory or the packed .npz", flag_values=fv)
    flags.DEFINE_bool("small", False, "a quick run (tests): 300 movies x 100 users, 8 steps",
                      flag_values=fv)


# --- the data -------------------------------------------------------------------------------------

def load_data(path: str | Path = movielens.DEFAULT_COURSE_SMALL, movies: int | None = None,
              users: int | None = None) -> dict[str, np.ndarray]:
    """Ratings normalized per movie (Y), the indicator R, the first `movies` x `users`."""
    course = movielens.load_course_small(path)
    Y, R = course["Y"][:movies, :users], course["R"][:movies, :users]
    Ynorm, _ = movielens.normalize_ratings(Y, R)
    return {"Y": Ynorm, "R": R.astype(np.float32)}


def init_params(n_movies: int, n_users: int, features: int, seed: int = 0
                ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"X": (0.1 * rng.standard_normal((n_movies, features))).astype(np.float32),
            "W": (0.1 * rng.standard_normal((n_users, features))).astype(np.float32),
            "b": np.zeros((1, n_users), np.float32)}


# --- the graph, placed the TensorFlow 1 way ------------------------------------------------------

def build_graph(n_movies: int, n_users: int, features: int, lambda_: float,
                movie_device: str | None = MOVIE_DEVICE, user_device: str | None = USER_DEVICE,
                metric_device: str | None = METRIC_DEVICE) -> dict[str, Any]:
    """The cost J = 1/2 sum(R (X W^T + b - Y)^2) + lambda/2 (sum X^2 + sum W^2), its gradients
    with respect to X, W, b (`ap.gradients`) and an RMSE metric, as one graph.

    The movie side runs on `movie_device`, the user side on `user_device`, the metric on
    `metric_device`; None makes no request (all three None: the unplaced graph)."""
    with ap.Graph() as g:
        Y = ap.placeholder((n_movies, n_users), name="Y")
        R = ap.placeholder((n_movies, n_users), name="R")
        X = ap.placeholder((n_movies, features), name="X")
        W = ap.placeholder((n_users, features), name="W")
        b = ap.placeholder((1, n_users), name="b")
        with ap.device(user_device):  # the user side
            Wt = ap.transpose(W)
            reg_W = ap.sum(ap.square(W))
        with ap.device(movie_device):  # the movie side: one row per movie
            err = R * (ap.matmul(X, Wt) + b - Y)
            sq = ap.sum(ap.square(err))
            reg_X = ap.sum(ap.square(X))
            J = 0.5 * sq + (lambda_ / 2) * (reg_X + reg_W)
        with ap.device(metric_device):  # a metric, not differentiated
            rmse = ap.sqrt(sq / ap.sum(R))
        dX, dW, db = ap.gradients(J, [X, W, b])
    return {"graph": g, "Y": Y, "R": R, "X": X, "W": W, "b": b, "J": J, "rmse": rmse,
            "dX": dX, "dW": dW, "db": db, "Wt": Wt, "err": err}


def feeds(m: dict[str, Any], data: dict[str, Any], params: dict[str, Any]) -> dict[Any, Any]:
    return {m["Y"]: data["Y"], m["R"]: data["R"], m["X"]: params["X"], m["W"]: params["W"],
            m["b"]: params["b"]}


def cost_and_grads(m: dict[str, Any], data: dict[str, Any], params: dict[str, Any]
                   ) -> tuple[Any, Any, Any, Any]:
    """J, dJ/dX, dJ/dW, dJ/db of the graph `m` at `params` (one `g.run`)."""
    return tuple(m["graph"].run([m["J"], m["dX"], m["dW"], m["db"]], feeds(m, data, params)))


def descend(m: dict[str, Any], data: dict[str, Any], params: dict[str, Any], steps: int,
            learning_rate: float) -> tuple[list[float], dict[str, Any]]:
    """`steps` of plain gradient descent, each one `g.run`; the losses and the final params.

    The updates are JAX ops on the gradients where `g.run` left them: X's on the movie device,
    W's and b's on the user device."""
    losses: list[Any] = []
    for _ in range(steps):
        J, dX, dW, db = cost_and_grads(m, data, params)
        losses.append(J)
        params = {"X": params["X"] - learning_rate * dX, "W": params["W"] - learning_rate * dW,
                  "b": params["b"] - learning_rate * db}
    return [float(v) for v in losses], params


def gradient_rows(placement: Any) -> list[str]:
    """The table lines of the gradient nodes colocated with a forward node."""
    lines = placement.table().splitlines()
    return [line for line in lines[1:] if "colocated with" in line]


def device_of(placement: Any) -> Callable[[Any], str | None]:
    return lambda n: placement.decision(n).device_name if n in placement else None


def write_pictures(m: dict[str, Any], placement: Any, fetches: list[Any], svg_path: Path,
                   emit: Callable[[str], None]) -> dict[str, Any]:
    """The placed graph as SVG (one band per device) and DOT (rendered when Graphviz is here)."""
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg = to_svg(m["graph"], fetches, group=device_of(placement))
    svg_path.write_text(svg)
    dot_path = svg_path.with_suffix(".dot")
    dot = m["graph"].to_dot(fetches)
    dot_path.write_text(dot)
    out = {"svg": svg_path, "svg_bytes": len(svg.encode()), "dot": dot_path,
           "dot_clusters": dot.count("subgraph cluster_"), "dot_svg": None}
    emit(f"SVG of the placed graph ({len(placement.devices)} device band(s)): {svg_path}")
    emit(f"Graphviz DOT ({out['dot_clusters']} device cluster(s)): {dot_path}")
    try:
        dot_svg = svg_path.with_name(svg_path.stem + "_dot.svg")
        render(dot, str(dot_svg))
        out["dot_svg"] = dot_svg
        emit(f"  rendered with Graphviz: {dot_svg}")
    except RuntimeError as e:  # no `dot` program: the DOT text is still written
        emit(f"  not rendered: {str(e).split(';')[0]}")
    return out


# --- the tour -----------------------------------------------------------------------------------

def tour(data: dict[str, Any], *, features: int = 10, steps: int = 40,
         learning_rate: float = 0.001, lambda_: float = 1.0, seed: int = 0,
         svg: str | Path = DEFAULT_SVG, emit: Callable[[str], None] = print) -> dict[str, Any]:
    n_movies, n_users = data["Y"].shape
    params = init_params(n_movies, n_users, features, seed)
    m = build_graph(n_movies, n_users, features, lambda_)
    g = m["graph"]
    fetches = [m["J"], m["dX"], m["dW"], m["db"]]
    fed = feeds(m, data, params)

    emit("\n== where every node runs, and why ==")
    placement = g.placement(fetches + [m["rmse"]], fed)
    emit(placement.table())
    colocated = gradient_rows(placement)
    per_device = {line.split()[3]: line for line in reversed(colocated)}  # first per device
    emit(f"{len(colocated)} derivative nodes of ap.gradients are colocated with the forward "
         f"nodes they come from, e.g.\n  " + "\n  ".join(sorted(per_device.values())))

    emit(f"\n== soft placement: the metric asked for {METRIC_DEVICE} ==")
    rmse_decision = placement.decision(m["rmse"])
    soft = rmse_decision.reason.startswith("soft-placed")
    emit(f"rmse: {rmse_decision.reason}")
    rmse0 = float(g.run(m["rmse"], fed))
    emit(f"rmse at the initial features: {rmse0:.4f} (computed on {rmse_decision.device_name})")
    error_text = None
    ap.set_soft_device_placement(False)
    try:
        g.run(m["rmse"], fed)
        emit("with soft placement off, every request could be honored as asked")
    except ap.PlacementError as e:
        error_text = str(e)
        emit("with soft placement off, the run stops with:\n" + error_text)
    finally:
        ap.set_soft_device_placement(True)

    emit("\n== the partition: one subprogram per device and stage ==")
    part = g.placement(fetches, fed).partition()
    emit(str(part))
    transfer_bytes = sum(t.nbytes for t in part.transfers)
    emit(f"{len(part.subprograms)} subprograms, {len(part.transfers)} transfers, "
         f"{transfer_bytes} bytes moved per step")

    emit(f"\n== {steps} gradient-descent steps (learning rate {learning_rate:g}) ==")
    losses, final = descend(m, data, params, steps, learning_rate)
    unplaced = build_graph(n_movies, n_users, features, lambda_, None, None, None)
    want, _ = descend(unplaced, data, params, steps, learning_rate)
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, want))
    every = max(1, steps // 8)
    for k in range(0, steps, every):
        emit(f"step {k:4d}: loss {losses[k]:.4f} (unplaced {want[k]:.4f})")
    emit(f"placed X, W, b end on {sorted({str(final[k].devices().pop()) for k in final})}")

    emit("\n== pictures ==")
    pics = write_pictures(m, g.placement(fetches, fed), fetches, Path(svg), emit)

    out = {"losses": losses, "unplaced_losses": want, "max_rel_diff": rel,
           "first_loss": losses[0], "last_loss": losses[-1], "soft_placed": soft,
           "rmse_reason": rmse_decision.reason, "error": error_text,
           "devices": [str(d) for d in placement.devices], "subprograms": len(part.subprograms),
           "transfers": len(part.transfers), "transfer_bytes": transfer_bytes,
           "colocated_gradient_nodes": len(colocated), **pics}
    emit(f"\nsummary: devices={len(jax.devices())} loss_first={out['first_loss']:.6g} "
         f"loss_last={out['last_loss']:.6g} decreased={out['last_loss'] < out['first_loss']} "
         f"max_rel_diff_vs_unplaced={rel:.3g} agrees={rel <= 1e-5} soft_placed={soft} "
         f"subprograms={out['subprograms']} transfers={out['transfers']} "
         f"transfer_bytes={transfer_bytes} svg={out['svg']}")
    return out


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    movies, users, steps = (300, 100, 8) if F.small else (None, None, F.steps)
    data = load_data(F.course_small, movies, users)
    print(f"MovieLens practice set: {data['Y'].shape[0]} movies x {data['Y'].shape[1]} users, "
          f"{int(data['R'].sum())} ratings; {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s)")
    tour(data, features=F.features, steps=steps, learning_rate=F.learning_rate,
         lambda_=F.lambda_, seed=F.seed, svg=F.svg)


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
