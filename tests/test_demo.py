"""`python -m adplugin` (README's first command) runs, opens with the seed's 72, 54, 24 from all
three engines, and draws the gradient graph."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_opens_with_the_seed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adplugin", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    first = [line for line in lines if line.strip()][:5]
    assert first[0].startswith("== 1. f = 2ab^2 + 3a^2 b")
    assert [line.split(":")[-1].strip() for line in first[1:4]] == ["72, 54, 24"] * 3
    svg = tmp_path / "out" / "seed_gradient.svg"
    assert str(svg) in first[4]
    ET.parse(svg)  # a well-formed picture
    assert "sharded gradient equals unsharded: True" in proc.stdout
    assert "ap.gradients equals jax.grad: True" in proc.stdout
    assert "Traceback" not in proc.stderr
