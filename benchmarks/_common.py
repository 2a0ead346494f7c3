"""What every benchmark shares: the shipped ratings, and where the measured code came from.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this module is imported as `_common`.
Results go to benchmarks/results/ (git-ignored); each records the commit it measured.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The MovieLens practice set (4778 movies x 443 users), shipped compact with the examples.
DEFAULT_RATINGS = ROOT / "examples" / "data" / "course-small.npz"


def _movielens() -> Any:
    spec = importlib.util.spec_from_file_location("movielens", ROOT / "examples" / "movielens.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_ratings(path: str | Path = DEFAULT_RATINGS) -> tuple[np.ndarray, np.ndarray]:
    """Y (ratings, 0 where unrated) and R (1 where rated), movies x users, float32.

    `path`: the shipped course-small.npz, the practice set's CSV folder, or ml-latest-small.
    """
    data = _movielens().load(path)
    return data["Y"], data["R"]


def source() -> dict[str, Any]:
    """The git commit measured and the files changed since (None outside a git checkout)."""
    out: dict[str, Any] = {"commit": None, "uncommitted_changes": None}
    git = ["git", "-C", str(ROOT)]
    try:
        out["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                                       text=True, timeout=30, check=True).stdout.strip()
        status = subprocess.run(git + ["status", "--porcelain", "--", "adplugin", "benchmarks"],
                                capture_output=True, text=True, timeout=30, check=True)
        out["uncommitted_changes"] = [line[3:] for line in status.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout
    return out


def run_meta() -> dict[str, Any]:
    """The run's provenance: commit, versions, backend, machine."""
    return {"adplugin": source(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
