"""MovieLens rating data for the collaborative-filtering examples, and the cost written in ap.*.

Two layouts, both as a dense movies x users matrix of ratings Y (0 where unrated) and an
indicator R (1 where rated), float32:

- `load_course_small(path)`: the collaborative-filtering practice set (4778 movies x 443
  users, 10 pre-trained features: X, W, b), either as its CSV directory
  (`small_movies_{Y,R,X,W,b}.csv`, `small_movie_list.csv`) or as the compact copy the project
  ships, examples/data/course-small.npz (`pack_course_small` writes it from the CSVs; same
  values, 0.4 MB instead of 13 MB; derived from ml-latest-small, so GroupLens' terms in
  examples/data/ml-latest-small/README.txt apply to it).
- `load_ml_latest_small(directory, min_ratings=0)`: GroupLens' ml-latest-small release
  (`ratings.csv`, `movies.csv`, CRLF line endings), 610 users x 9742 movies; a copy with its
  README.txt (GroupLens' terms of use) ships in examples/data/ml-latest-small/.

`normalize_ratings` subtracts each movie's mean rating over the users who rated it, and
`cofi_cost` is the regularized collaborative-filtering cost, built from ap.* ops so it records on
a GradientTape, and works under jax.grad / jit on plain arrays.

    python examples/movielens.py [--data DIR] [--course_small PATH]

prints a summary of the data and checks `cofi_cost` against the practice set's known figures.
Importing this module defines no flags.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

import adplugin as ap

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_ML_LATEST_SMALL = DATA_DIR / "ml-latest-small"
DEFAULT_COURSE_SMALL = DATA_DIR / "course-small.npz"  # the practice set, shipped compact

# The practice set's known cost figures (first 5 movies x 4 users x 3 features).
COURSE_SMALL_FIGURES = {0.0: 13.67, 1.5: 28.09}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_string("data", str(DEFAULT_ML_LATEST_SMALL), "ml-latest-small directory",
                        flag_values=fv)
    flags.DEFINE_string("course_small", str(DEFAULT_COURSE_SMALL),
                        "course-small practice set: its CSV directory or a packed .npz",
                        flag_values=fv)


# --- loading --------------------------------------------------------------------------------------

def _matrix(path: Path) -> np.ndarray:
    return np.atleast_2d(np.loadtxt(path, delimiter=",", dtype=np.float32))


def load_course_small(path: str | Path = DEFAULT_COURSE_SMALL) -> dict[str, Any]:
    """The practice set: Y, R (4778x443), X (4778x10), W (443x10), b (1x443), titles.

    `path` is the CSV directory or a file written by `pack_course_small`.
    """
    if Path(path).suffix == ".npz":
        return _unpack_course_small(Path(path))
    d = Path(path)
    data: dict[str, Any] = {k: _matrix(d / f"small_movies_{k}.csv") for k in "YRXWb"}
    with open(d / "small_movie_list.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    if header[1:] != ["mean rating", "number of ratings", "title"]:
        raise ValueError(f"{d / 'small_movie_list.csv'}: unexpected header {header}; expected "
                         "',mean rating,number of ratings,title'")
    data["titles"] = [r[3] for r in rows]
    data["n_ratings"] = np.array([int(float(r[2])) for r in rows])
    n_movies, n_users = data["Y"].shape
    if len(data["titles"]) != n_movies or data["R"].shape != (n_movies, n_users):
        raise ValueError(f"{d}: {len(data['titles'])} titles and R of shape {data['R'].shape} "
                         f"do not match Y of shape {data['Y'].shape}")
    return data


def pack_course_small(directory: str | Path, out: str | Path) -> None:
    """Write the practice set's CSVs as one compressed .npz that loads to the same values.

    Ratings are half stars, so they are stored sparsely as (row, column, 2 x rating); X, W, b
    keep the float32 values the CSV loader produces.
    """
    data = load_course_small(directory)
    rows, cols = np.nonzero(data["R"])
    np.savez_compressed(out, rows=rows.astype(np.int32), cols=cols.astype(np.int32),
                        half_stars=(2 * data["Y"][rows, cols]).astype(np.uint8),
                        shape=np.array(data["Y"].shape), X=data["X"], W=data["W"], b=data["b"],
                        titles=np.array(data["titles"]), n_ratings=data["n_ratings"])


def _unpack_course_small(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        Y = np.zeros(tuple(z["shape"]), np.float32)
        R = np.zeros_like(Y)
        Y[z["rows"], z["cols"]] = z["half_stars"].astype(np.float32) / 2
        R[z["rows"], z["cols"]] = 1.0
        return {"Y": Y, "R": R, "X": z["X"], "W": z["W"], "b": z["b"],
                "titles": [str(t) for t in z["titles"]], "n_ratings": z["n_ratings"]}


def load_ml_latest_small(directory: str | Path = DEFAULT_ML_LATEST_SMALL,
                         min_ratings: int = 0) -> dict[str, Any]:
    """ml-latest-small as Y, R (movies x users), titles, movie and user ids.

    All movies of movies.csv (in its order) and all users of ratings.csv (in id order) are kept,
    so movies nobody rated have all-zero rows; with `min_ratings` > 0 only movies with at least
    that many ratings are kept (users are all kept). `n_ratings` counts each movie's ratings.
    """
    d = Path(directory)
    with open(d / "movies.csv", newline="", encoding="utf-8") as f:  # csv handles CRLF
        reader = csv.reader(f)
        header = next(reader)
        if header[:2] != ["movieId", "title"]:
            raise ValueError(f"{d / 'movies.csv'}: unexpected header {header}")
        movies = [(int(r[0]), r[1]) for r in reader if r]
    with open(d / "ratings.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[:3] != ["userId", "movieId", "rating"]:
            raise ValueError(f"{d / 'ratings.csv'}: unexpected header {header}")
        ratings = np.array([(int(r[0]), int(r[1]), float(r[2])) for r in reader if r],
                           dtype=np.float64)
    user_ids = np.unique(ratings[:, 0]).astype(np.int64)
    movie_ids = np.array([m for m, _ in movies], dtype=np.int64)
    row_of = {m: i for i, m in enumerate(movie_ids)}
    rows = np.array([row_of[int(m)] for m in ratings[:, 1]])
    cols = np.searchsorted(user_ids, ratings[:, 0].astype(np.int64))
    Y = np.zeros((len(movie_ids), len(user_ids)), np.float32)
    R = np.zeros_like(Y)
    Y[rows, cols] = ratings[:, 2]
    R[rows, cols] = 1.0
    n_ratings = R.sum(axis=1).astype(np.int64)
    keep = n_ratings >= min_ratings
    titles = [t for (_, t), k in zip(movies, keep) if k]
    return {"Y": Y[keep], "R": R[keep], "titles": titles, "movie_ids": movie_ids[keep],
            "user_ids": user_ids, "n_ratings": n_ratings[keep], "n_ratings_total": len(ratings)}


def load(directory: str | Path, min_ratings: int = 0) -> dict[str, Any]:
    """Either layout, detected from its files (course-small: small_movies_Y.csv or .npz)."""
    d = Path(directory)
    if d.suffix == ".npz" or (d / "small_movies_Y.csv").exists():
        return load_course_small(d)
    if (d / "ratings.csv").exists():
        return load_ml_latest_small(d, min_ratings=min_ratings)
    raise FileNotFoundError(f"{d}: neither small_movies_Y.csv (course-small) nor ratings.csv "
                            "(ml-latest-small) found; pass a MovieLens data directory")


# --- the model ------------------------------------------------------------------------------------

def normalize_ratings(Y: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each movie's mean over its rated entries (unrated entries stay 0).

    Returns (Ynorm, Ymean) with Ymean of shape (movies, 1); movies nobody rated get mean 0.
    """
    counts = R.sum(axis=1, keepdims=True)
    Ymean = (Y * R).sum(axis=1, keepdims=True) / np.maximum(counts, 1)
    return ((Y - Ymean) * R).astype(Y.dtype), Ymean.astype(Y.dtype)


def cofi_cost(X: Any, W: Any, b: Any, Y: Any, R: Any, lambda_: float) -> Any:
    """J = ½ Σ R ⊙ (X Wᵀ + b − Y)² + λ/2 (Σ X² + Σ W²), with ap.* ops.

    X: (movies, features), W: (users, features), b: (1, users), Y and R: (movies, users).
    """
    err = ap.multiply(R, ap.subtract(ap.add(ap.matmul(X, ap.transpose(W)), b), Y))
    J = ap.multiply(0.5, ap.sum(ap.square(err)))
    if lambda_:
        J = ap.add(J, ap.multiply(lambda_ / 2,
                                  ap.add(ap.sum(ap.square(X)), ap.sum(ap.square(W)))))
    return J


def course_small_figures(data: dict[str, Any]) -> dict[float, float]:
    """cofi_cost on the first 5 movies x 4 users x 3 features, for λ = 0 and 1.5."""
    X, W, b = data["X"][:5, :3], data["W"][:4, :3], data["b"][:, :4]
    Y, R = data["Y"][:5, :4], data["R"][:5, :4]
    return {lam: float(cofi_cost(X, W, b, Y, R, lam)) for lam in COURSE_SMALL_FIGURES}


def report(ml: dict[str, Any], course: dict[str, Any] | None,
           emit: Callable[[str], None] = print) -> None:
    n_movies, n_users = ml["Y"].shape
    emit(f"ml-latest-small: {ml['n_ratings_total']} ratings by {n_users} users of {n_movies} "
         f"movies ({int((ml['n_ratings'] > 0).sum())} rated at least once), density "
         f"{ml['R'].mean():.4f}")
    if course is None:
        emit("course-small: not found (pass --course_small DIR)")
        return
    emit(f"course-small: Y {course['Y'].shape}, {int(course['R'].sum())} ratings, X "
         f"{course['X'].shape}, W {course['W'].shape}, b {course['b'].shape}")
    for lam, J in course_small_figures(course).items():
        emit(f"cofi_cost on 5 movies x 4 users x 3 features, lambda={lam:g}: {J:.2f} "
             f"(expected {COURSE_SMALL_FIGURES[lam]:.2f})")


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    ml = load_ml_latest_small(F.data)
    course_path = Path(F.course_small)
    found = course_path.is_file() or (course_path / "small_movies_Y.csv").exists()
    report(ml, load_course_small(course_path) if found else None)


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
