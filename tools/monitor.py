#!/usr/bin/env python3
"""The live view: `tools/monitor.py [BOOK ...]` is `ar.py monitor [BOOK ...]` (pipeline/live.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages sit beside tools/

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
