"""What every example script's command line shares: `--help` that exits 0, and
`--num_devices` read before JAX starts.

absl's `--help` exits with status 1; a user asking for help did nothing wrong. Imported by the
examples only when they run as scripts (their folder is then on `sys.path`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

_SHORT_HELP = {"--help", "-help", "-h", "-?", "--helpshort", "-helpshort"}
_FULL_HELP = {"--helpfull", "-helpfull"}


def _parse(argv: list[str]) -> list[str]:
    asked = set(argv[1:])
    if asked & (_SHORT_HELP | _FULL_HELP):
        doc = sys.modules["__main__"].__doc__ or ""
        print(doc.strip() + "\n")
        fv = flags.FLAGS
        print(fv.get_help() if asked & _FULL_HELP else fv.main_module_help())
        sys.exit(0)
    return app.parse_flags_with_usage(argv)


def run_main(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`, with help that exits 0, and JAX's informational log lines
    (absl shows INFO by default: "Unable to initialize backend 'tpu'" on every CPU run)
    left out unless `--verbosity` asks for them."""

    def quiet_main(argv: list[str]) -> Any:
        if not flags.FLAGS["verbosity"].present:
            logging.getLogger("jax").setLevel(logging.WARNING)
        return main(argv)

    app.run(quiet_main, flags_parser=_parse)


def force_host_devices(argv: Sequence[str], default: int) -> int:
    """Set XLA_FLAGS for `--num_devices N` (or `default`) host devices; call it before JAX
    is imported (XLA reads the flag once, when its CPU backend starts)."""
    n = default
    for k, arg in enumerate(argv):
        if arg.startswith("--num_devices="):
            n = int(arg.split("=", 1)[1])
        elif arg == "--num_devices" and k + 1 < len(argv):
            n = int(argv[k + 1])
    flags_ = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                    os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count={n}".strip()
    return n
