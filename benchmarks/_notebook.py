"""What the benchmark notebooks share: the SMALL switch, the output folder, figures, JSON.

The notebooks (`benchmarks/nb_*.py`, jupytext percent format) import this as `_notebook`: run
as scripts, their folder is on `sys.path`; opened in Jupyter, their folder is the kernel's
working directory.

Environment variables:
- `ADPLUGIN_NOTEBOOK_SMALL=1`: tiny settings, so a notebook runs in seconds (the test suite);
- `ADPLUGIN_NOTEBOOK_OUT=DIR`: where figures and JSON go (default `benchmarks/results/`,
  git-ignored).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from _common import RESULTS, run_meta

SMALL_ENV = "ADPLUGIN_NOTEBOOK_SMALL"
OUT_ENV = "ADPLUGIN_NOTEBOOK_OUT"
T = TypeVar("T")

SMALL: bool = os.environ.get(SMALL_ENV, "").strip().lower() not in ("", "0", "false", "no")
_START = time.perf_counter()


def pick(full: T, small: T) -> T:
    """`small` when the SMALL switch is on, else `full`."""
    return small if SMALL else full


def out_dir() -> Path:
    """The folder for figures and JSON (created): $ADPLUGIN_NOTEBOOK_OUT or benchmarks/results."""
    path = Path(os.environ.get(OUT_ENV) or RESULTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_notebook() -> bool:
    """True inside a Jupyter kernel (figures are shown inline), False when run as a script."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and get() is not None and "IPKernelApp" in get().config


def save_figure(fig: Any, name: str) -> Path:
    """Save `fig` as <out>/<name>.png, then show it (in a notebook) or close it (as a script)."""
    import matplotlib.pyplot as plt

    path = out_dir() / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if in_notebook():
        plt.show()
    else:
        plt.close(fig)
    print(f"saved {path.name}")
    return path


def write_result(notebook: str, settings: dict[str, Any], **sections: Any) -> Path:
    """Write <out>/<notebook>.json: run_meta() (the commit measured), settings, sections."""
    import jax

    meta = {**run_meta(), "notebook": notebook, "small": SMALL, "in_notebook": in_notebook(),
            "devices": jax.device_count(), "total_s": time.perf_counter() - _START}
    result = {"meta": meta, "settings": settings, **sections}
    path = out_dir() / f"{notebook}.json"
    path.write_text(json.dumps(result, indent=2, default=_plain))
    print(f"wrote {path.name} (commit {meta['adplugin']['commit']})")
    return path


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
