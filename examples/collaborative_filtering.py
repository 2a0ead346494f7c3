"""Collaborative filtering on MovieLens ratings with ap.Variables, a GradientTape and Adam.

Movie features X (movies x features), user weights W (users x features) and user biases b
(1 x users) are learned so that X Wᵀ + b fits the mean-normalized ratings where they exist,
minimizing the regularized cost of `movielens.cofi_cost`. A new user (column 0) is added with a
few ratings looked up by title, as in the classic course exercise; after training, the movies
with the highest predicted ratings for that user are printed, then the predictions for the movies
they rated next to their ratings.

    python examples/collaborative_filtering.py [--data DIR] [--features 100] [--iterations 200]
        [--lambda_ 1.0] [--learning_rate 0.1] [--seed 1234] [--top 10] [--min_ratings 0]
        [--min_ratings_top 20]

--data: ml-latest-small (default: the copy shipped in examples/data/ml-latest-small) or the
course-small practice set (examples/data/course-small.npz, or its CSV folder); the layout is
detected from the files. --min_ratings drops movies of ml-latest-small with fewer ratings
before training; --min_ratings_top only shows movies with at least that many ratings among the
top predictions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm import tqdm

import adplugin as ap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import movielens  # noqa: E402

# The new user's ratings (title -> stars), after the classic course exercise. Titles missing
# from the loaded data (or filtered out by --min_ratings) are skipped with a note.
NEW_USER_RATINGS: dict[str, float] = {
    "Toy Story 3 (2010)": 5,
    "Persuasion (2007)": 2,
    "Lord of the Rings: The Return of the King, The (2003)": 5,
    "Shrek (2001)": 5,
    "Inception (2010)": 3,
    "Incredibles, The (2004)": 5,
    "Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)": 2,
    "Harry Potter and the Sorcerer's Stone (a.k.a. Harry Potter and the Philosopher's Stone) "
    "(2001)": 5,
    "Harry Potter and the Chamber of Secrets (2002)": 5,
    "Eternal Sunshine of the Spotless Mind (2004)": 3,
    "Louis Theroux: Law & Disorder (2008)": 1,
    "Nothing to Declare (Rien à déclarer) (2010)": 1,
    "Pirates of the Caribbean: The Curse of the Black Pearl (2003)": 5,
}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_string("data", str(movielens.DEFAULT_ML_LATEST_SMALL),
                        "MovieLens data: ml-latest-small (ratings.csv) or course-small "
                        "(course-small.npz or small_movies_Y.csv)", flag_values=fv)
    flags.DEFINE_integer("features", 100, "number of features per movie and user",
                         flag_values=fv)
    flags.DEFINE_integer("iterations", 200, "Adam steps", flag_values=fv)
    flags.DEFINE_float("lambda_", 1.0, "regularization strength λ", flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.1, "Adam learning rate", flag_values=fv)
    flags.DEFINE_integer("seed", 1234, "seed of the random initial X, W, b", flag_values=fv)
    flags.DEFINE_integer("top", 10, "how many top predictions to print", flag_values=fv)
    flags.DEFINE_integer("min_ratings", 0, "ml-latest-small: keep movies with at least this "
                         "many ratings", flag_values=fv)
    flags.DEFINE_integer("min_ratings_top", 20, "top predictions: only movies with at least this "
                         "many ratings (0 for all)", flag_values=fv)


def lookup(titles: list[str], ratings: Mapping[str, float]) -> tuple[dict[int, float], list[str]]:
    """Movie index -> rating for the titles found, and the titles not found."""
    index = {t: i for i, t in enumerate(titles)}
    found = {index[t]: float(r) for t, r in ratings.items() if t in index}
    return found, [t for t in ratings if t not in index]


def add_user(Y: np.ndarray, R: np.ndarray, ratings: Mapping[int, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Y and R with the new user's ratings as column 0."""
    y = np.zeros((Y.shape[0], 1), Y.dtype)
    for i, r in ratings.items():
        y[i, 0] = r
    return np.hstack([y, Y]), np.hstack([(y > 0).astype(R.dtype), R])


def train(data_dir: str | Path = movielens.DEFAULT_ML_LATEST_SMALL, features: int = 100,
          iterations: int = 200, lambda_: float = 1.0, learning_rate: float = 0.1,
          seed: int = 1234, min_ratings: int = 0,
          new_user: Mapping[str, float] | None = None, log_every: int = 20,
          emit: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Load, add the new user, normalize, train; returns the loss history and predictions.

    `predictions` (movies x users, in stars) = X Wᵀ + b + the movies' mean ratings; the new user
    is column 0.
    """
    data = movielens.load(data_dir, min_ratings=min_ratings)
    titles = data["titles"]
    my_ratings, missing = lookup(titles, NEW_USER_RATINGS if new_user is None else new_user)
    Y, R = add_user(data["Y"], data["R"], my_ratings)
    Ynorm, Ymean = movielens.normalize_ratings(Y, R)
    n_movies, n_users = Y.shape

    rng = np.random.default_rng(seed)
    X, W, b = (ap.Variable(rng.standard_normal(shape, np.float32), name=name) for name, shape in
               (("X", (n_movies, features)), ("W", (n_users, features)), ("b", (1, n_users))))
    params = [X, W, b]
    optimizer = ap.optimizers.Adam(learning_rate=learning_rate)
    Yj, Rj = jnp.asarray(Ynorm), jnp.asarray(R)

    losses: list[float] = []
    for it in tqdm(range(iterations), desc="training", disable=not progress):
        with ap.GradientTape() as tape:
            cost = movielens.cofi_cost(X, W, b, Yj, Rj, lambda_)
        grads = tape.gradient(cost, params)
        optimizer.apply_gradients(zip(grads, params))
        losses.append(float(cost))
        if emit is not None and log_every and it % log_every == 0:
            emit(f"training loss at iteration {it}: {losses[-1]:.1f}")
    final = float(movielens.cofi_cost(X, W, b, Yj, Rj, lambda_))  # after the last step

    predictions = np.asarray(X.value @ W.value.T + b.value) + Ymean
    return {
        "titles": titles, "n_ratings": data["n_ratings"], "shape": (n_movies, n_users),
        "n_observed": int(R.sum()), "losses": losses, "final_loss": final,
        "my_ratings": my_ratings, "missing": missing, "predictions": predictions,
        "my_predictions": predictions[:, 0], "X": X.numpy(), "W": W.numpy(), "b": b.numpy(),
    }


def top_predictions(r: dict[str, Any], top: int = 10, min_ratings: int = 0
                    ) -> list[tuple[int, float, str]]:
    """(index, predicted stars, title) of the best-predicted movies the new user has not rated."""
    p = r["my_predictions"]
    order = np.argsort(-p)
    rows = [(int(i), float(p[i]), r["titles"][i]) for i in order
            if int(i) not in r["my_ratings"] and r["n_ratings"][i] >= min_ratings]
    return rows[:top]


def report(r: dict[str, Any], top: int = 10, min_ratings_top: int = 0,
           emit: Callable[[str], None] = print) -> None:
    n_movies, n_users = r["shape"]
    emit(f"trained on {r['n_observed']} ratings of {n_movies} movies by {n_users} users "
         f"(the new user included); final loss {r['final_loss']:.1f}")
    for t in r["missing"]:
        emit(f"(not in this data, skipped: {t})")
    note = f", at least {min_ratings_top} ratings" if min_ratings_top else ""
    emit(f"\ntop {top} predictions for the new user (movies they did not rate{note}):")
    for _, stars, title in top_predictions(r, top, min_ratings_top):
        emit(f"  predicting rating {stars:.2f} for movie {title}")
    emit("\noriginal vs predicted ratings:")
    for i, rating in sorted(r["my_ratings"].items()):
        emit(f"  original {rating:g}, predicted {r['my_predictions'][i]:.2f} for "
             f"{r['titles'][i]}")


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    r = train(F.data, F.features, F.iterations, F.lambda_, F.learning_rate, F.seed,
              F.min_ratings, emit=tqdm.write, progress=True)
    report(r, F.top, F.min_ratings_top)
    if not np.isfinite(r["my_predictions"]).all():
        sys.exit("non-finite predictions")


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
