"""Every example script's command line: `--help` exits 0 and shows the script's own flags."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from _examples import EXAMPLES, ROOT

SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_help_exits_zero_and_lists_the_flags(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{script.name}:" in proc.stdout  # absl's heading of the script's own flags
    assert "Traceback" not in proc.stderr


def test_a_bad_flag_still_fails():
    """Help exits 0; a mistyped flag must not (the parser still rejects it)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "gradient_descent.py"),
                           "--no_such_flag=1"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode != 0 and "no_such_flag" in proc.stderr


def test_no_backend_log_lines_unless_asked():
    """absl shows INFO logs by default; JAX's "Unable to initialize backend 'tpu'" on every CPU
    run is left out, and `--verbosity 0` brings JAX's log lines back."""
    script = [sys.executable, str(EXAMPLES / "gradient_descent.py"), "--steps", "2"]
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # JAX probes backends
    quiet = subprocess.run(script, capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env=env)
    assert quiet.returncode == 0 and "xla_bridge" not in quiet.stderr, quiet.stderr[-2000:]
    probe = ("import logging, sys; sys.path.insert(0, 'examples'); from _cli import run_main; "
             "run_main(lambda argv: print(logging.getLogger('jax').getEffectiveLevel()))")
    levels = [subprocess.run([sys.executable, "-c", probe, *extra], capture_output=True,
                             text=True, timeout=120, cwd=ROOT).stdout.split()[-1]
              for extra in ([], ["--verbosity", "0"])]
    assert levels == [str(logging.WARNING), str(logging.INFO)]  # quiet; asked for: shown
