"""``python -m deathtensors``: the same command tree as the ``deathtensors`` binary."""

from __future__ import annotations

import sys
from typing import List, Optional

from . import _core


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if sys.stdout is not None:  # None when the process started with its stdout closed
        sys.stdout.flush()
    return int(_core.cli_main(["deathtensors", *args]))


def run() -> None:
    """Entry point of the installed ``deathtensors`` command."""
    sys.exit(main())


if __name__ == "__main__":
    run()
