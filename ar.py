#!/usr/bin/env python3
"""ar: turn scanned books into clean text with LLMs, resumably. See README.md."""
import signal
import sys
from pathlib import Path

# Ctrl-C and SIGTERM wait until ar's modules are imported: one that lands inside an import can
# surface as another error (a RuntimeError from a class being built). Then SIGTERM is a Ctrl-C.
STOPS = {signal.SIGINT, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.cli import main  # noqa: E402

signal.signal(signal.SIGTERM, signal.default_int_handler)
try:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # one that came meanwhile is raised here
except KeyboardInterrupt:
    print("ar: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
