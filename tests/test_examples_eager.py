"""The eager examples: MovieLens loading and cost, gradient descent, linear regression, a
persistent tape, collaborative filtering; each script also runs as a subprocess."""

from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _examples import EXAMPLES, ROOT, load_example

DATA = EXAMPLES / "data"
SHIPPED = DATA / "ml-latest-small"
COURSE_SMALL = DATA / "course-small.npz"


movielens = load_example("movielens")
gradient_descent = load_example("gradient_descent")
linear_regression = load_example("linear_regression")
tape_two_variables = load_example("tape_two_variables")
collaborative_filtering = load_example("collaborative_filtering")

@pytest.fixture(scope="module")
def ml():
    return movielens.load_ml_latest_small(SHIPPED)


# --- movielens -----------------------------------------------------------------------------------

def test_course_small_loader_and_cost_figures():
    data = movielens.load_course_small(COURSE_SMALL)
    shapes = {k: data[k].shape for k in "YRXWb"}
    assert shapes == {"Y": (4778, 443), "R": (4778, 443), "X": (4778, 10), "W": (443, 10),
                      "b": (1, 443)}
    assert all(data[k].dtype == np.float32 for k in "YRXWb")
    assert int(data["R"].sum()) == 39253
    assert len(data["titles"]) == 4778 and data["titles"][0] == "Yards, The (2000)"
    figures = movielens.course_small_figures(data)
    assert round(figures[0.0], 2) == 13.67
    assert round(figures[1.5], 2) == 28.09


def test_shipped_data_is_byte_identical():
    assert (SHIPPED / "README.txt").exists(), "ml-latest-small must ship with its README.txt"
    sums = dict(reversed(line.split()) for line in (DATA / "SHA256SUMS").read_text()
                .splitlines() if line.strip())
    assert {"ml-latest-small/ratings.csv", "ml-latest-small/movies.csv",
            "ml-latest-small/README.txt", "course-small.npz"} <= sums.keys()
    for name, want in sums.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == want, name


def test_packed_course_small_round_trips(tmp_path):
    """pack_course_small writes what load_course_small reads back, value for value."""
    data = movielens.load_course_small(COURSE_SMALL)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for k in "YRXWb":
        np.savetxt(csv_dir / f"small_movies_{k}.csv", data[k], delimiter=",", fmt="%.9g")
    with open(csv_dir / "small_movie_list.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["", "mean rating", "number of ratings", "title"])
        writer.writerows([i, 0, n, t] for i, (t, n) in enumerate(zip(data["titles"],
                                                                      data["n_ratings"])))
    movielens.pack_course_small(csv_dir, tmp_path / "packed.npz")
    again = movielens.load_course_small(tmp_path / "packed.npz")
    for k in "YRXWb":
        assert again[k].dtype == np.float32 and np.array_equal(again[k], data[k]), k
    assert again["titles"] == data["titles"]


def test_ml_latest_small_loader_matches_readme(ml):
    readme = (SHIPPED / "README.txt").read_text(encoding="utf-8")
    m = re.search(r"It contains (\d+) ratings .*? across (\d+) movies\. These data were created "
                  r"by (\d+) users", readme)
    n_ratings, n_movies, n_users = map(int, m.groups())
    assert (n_ratings, n_movies, n_users) == (100836, 9742, 610)
    assert ml["Y"].shape == ml["R"].shape == (n_movies, n_users)
    assert ml["Y"].dtype == ml["R"].dtype == np.float32
    assert int(ml["R"].sum()) == ml["n_ratings_total"] == n_ratings
    assert len(ml["titles"]) == n_movies and ml["titles"][0] == "Toy Story (1995)"
    assert "American President, The (1995)" in ml["titles"]  # quoted title with a comma
    rated = ml["Y"][ml["R"] == 1]
    assert rated.min() == 0.5 and rated.max() == 5.0
    assert (ml["Y"][ml["R"] == 0] == 0).all()
    assert ml["Y"][0, 0] == 4.0  # user 1 gave Toy Story 4.0 stars (first line of ratings.csv)


def test_ml_latest_small_min_ratings_filter(ml):
    small = movielens.load_ml_latest_small(SHIPPED, min_ratings=50)
    keep = ml["n_ratings"] >= 50
    assert small["Y"].shape == (int(keep.sum()), 610)
    np.testing.assert_array_equal(small["Y"], ml["Y"][keep])
    assert small["titles"] == [t for t, k in zip(ml["titles"], keep) if k]


def test_normalize_ratings():
    Y = np.array([[5, 0, 3], [0, 0, 0], [1, 2, 0]], np.float32)
    R = (Y > 0).astype(np.float32)
    Ynorm, Ymean = movielens.normalize_ratings(Y, R)
    np.testing.assert_allclose(Ymean[:, 0], [4.0, 0.0, 1.5])
    np.testing.assert_allclose(Ynorm, [[1, 0, -1], [0, 0, 0], [-0.5, 0.5, 0]])


def _cofi_cost_jnp(X, W, b, Y, R, lambda_):
    J = 0.5 * jnp.sum((R * (X @ W.T + b - Y)) ** 2)
    return J + lambda_ / 2 * (jnp.sum(X**2) + jnp.sum(W**2))


def test_tape_gradient_equals_jax_grad(ml):
    import adplugin as ap

    rows = np.flatnonzero(ml["n_ratings"] >= 100)[:60]
    Y, R = ml["Y"][rows, :80], ml["R"][rows, :80]
    Ynorm, _ = movielens.normalize_ratings(Y, R)
    rng = np.random.default_rng(0)
    init = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((60, 7), (80, 7), (1, 80))]
    Yj, Rj = jnp.asarray(Ynorm), jnp.asarray(R)
    expected = jax.jit(jax.grad(_cofi_cost_jnp, argnums=(0, 1, 2)))(*init, Yj, Rj, 1.5)
    tol = [{"rtol": 1e-4, "atol": 1e-4 * float(np.abs(e).max())} for e in expected]
    params = [ap.Variable(v) for v in init]
    for _ in range(3):  # interpreted first, then the cached (compiled) program
        with ap.GradientTape() as tape:
            loss = movielens.cofi_cost(*params, Yj, Rj, 1.5)
        grads = tape.gradient(loss, params)
        for g, e, t in zip(grads, expected, tol):
            np.testing.assert_allclose(g, e, **t)
    assert float(loss) == pytest.approx(float(_cofi_cost_jnp(*init, Yj, Rj, 1.5)), rel=1e-5)
    # and jax.grad straight through the ap.* cost
    via_jax = jax.jit(jax.grad(movielens.cofi_cost, argnums=(0, 1, 2)),
                      static_argnums=5)(*init, Yj, Rj, 1.5)
    for g, e, t in zip(via_jax, expected, tol):
        np.testing.assert_allclose(g, e, **t)


# --- gradient descent, linear regression, the two-variable tape ---------------------------------

def test_gradient_descent_closed_form():
    history = gradient_descent.run(steps=30, alpha=0.01, w0=3.0, x=1.0)
    assert len(history) == 31
    for k, (w, loss) in enumerate(history):
        wk = gradient_descent.closed_form(k, 0.01, 3.0, 1.0)
        assert w == pytest.approx(wk, rel=1e-5)
        assert loss == pytest.approx((wk - 1.0) ** 2, rel=1e-4)
    for k, (w, _) in enumerate(gradient_descent.run(steps=5, alpha=0.05, w0=-1.0, x=2.0)):
        assert w == pytest.approx(gradient_descent.closed_form(k, 0.05, -1.0, 2.0), rel=1e-5)


def test_linear_regression_reaches_least_squares(tmp_path):
    r = linear_regression.train(steps=600, learning_rate=0.02)
    W_ls, b_ls = np.linalg.lstsq(
        np.stack([linear_regression.TRAIN_X, np.ones_like(linear_regression.TRAIN_X)], 1)
        .astype(np.float64), linear_regression.TRAIN_Y.astype(np.float64), rcond=None)[0]
    assert (r["W_lstsq"], r["b_lstsq"]) == pytest.approx((W_ls, b_ls), abs=1e-6)
    assert r["W"] == pytest.approx(W_ls, abs=1e-4)
    assert r["b"] == pytest.approx(b_ls, abs=1e-4)
    assert r["losses"][-1] < r["losses"][0]
    assert r["train_half_mse"] == pytest.approx(r["train_half_mse_lstsq"], rel=1e-4)
    assert r["test_half_mse"] == pytest.approx(r["test_half_mse_lstsq"], rel=1e-3)
    png = tmp_path / "fit.png"
    linear_regression.plot(r, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tape_two_variables_matches_jax_grad():
    w1, w2, x = (0.5, -1.0, 0.25), 0.5, (1.0, 2.0, 3.0)
    r = tape_two_variables.compute(w1, w2, x)

    def z(a, c, xs):
        return a * xs + c

    def y1(a, c, xs):
        return jnp.sum(z(a, c, xs) ** 2)

    def y2(a, c, xs):
        s = jax.lax.stop_gradient(jnp.mean(jnp.abs(z(a, c, xs))))
        return jnp.sum(jnp.tanh(c * z(a, c, xs))) / s

    args = (jnp.asarray(w1), jnp.float32(w2), jnp.asarray(x))
    assert r["y1"] == pytest.approx(float(y1(*args)), rel=1e-6)
    assert r["y2"] == pytest.approx(float(y2(*args)), rel=1e-6)
    assert not r["s_recorded"]
    for name, f in (("dy1", y1), ("dy2", y2)):
        expected = jax.grad(f, argnums=(0, 1, 2))(*args)
        for key, e in zip(("w1", "w2", "x"), expected):
            np.testing.assert_allclose(r[name][key], e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["dz_dw1"], jax.jacrev(z)(*args), rtol=1e-6)


# --- collaborative filtering ---------------------------------------------------------------------

def test_collaborative_filtering_short_run():
    r = collaborative_filtering.train(SHIPPED, features=10, iterations=10, min_ratings=50,
                                      seed=0)
    losses = r["losses"]
    assert len(losses) == 10 and np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert r["final_loss"] < losses[-1]
    assert np.isfinite(r["predictions"]).all()
    assert r["predictions"].shape == (len(r["titles"]), 611)
    # the new user's ratings were found by title (the subset keeps the popular ones)
    titles = {r["titles"][i]: v for i, v in r["my_ratings"].items()}
    assert titles["Shrek (2001)"] == 5 and "Toy Story 3 (2010)" in titles
    top = collaborative_filtering.top_predictions(r, top=5)
    assert len(top) == 5 and all(i not in r["my_ratings"] for i, _, _ in top)
    assert [p for _, p, _ in top] == sorted((p for _, p, _ in top), reverse=True)


# --- the scripts ---------------------------------------------------------------------------------

def _run(args, cwd=ROOT):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_script_movielens():
    out = _run([EXAMPLES / "movielens.py"])
    assert "610 users of 9742 movies" in out


def test_script_gradient_descent():
    out = _run([EXAMPLES / "gradient_descent.py", "--steps", "3"])
    assert "step   3: w = 2.882" in out


def test_script_linear_regression_writes_png(tmp_path):
    out = _run([EXAMPLES / "linear_regression.py", "--steps", "300"], cwd=tmp_path)
    assert "least squares: W = 0.2516" in out
    assert (tmp_path / "linear_regression.png").read_bytes()[:4] == b"\x89PNG"


def test_script_tape_two_variables():
    out = _run([EXAMPLES / "tape_two_variables.py", "--w1=1,2", "--w2=-0.5", "--x=0.5,-1"])
    assert "dy1/dw2" in out and "dy2/dx" in out


def test_script_collaborative_filtering():
    out = _run([EXAMPLES / "collaborative_filtering.py", "--features", "5", "--iterations", "3",
                "--min_ratings", "20", "--top", "3"])
    assert "training loss at iteration 0" in out
    assert out.count("predicting rating") == 3
    assert "original 5, predicted" in out
