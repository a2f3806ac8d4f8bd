#!/usr/bin/env python3
"""ar: turn scanned books into clean text with LLMs, resumably. See README.md."""
import signal
import sys
from pathlib import Path

signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop, even while starting (pipeline/cli.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from pipeline.cli import main  # noqa: E402
except KeyboardInterrupt:  # Ctrl-C while ar is still starting: nothing begun, nothing lost
    print("ar: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
