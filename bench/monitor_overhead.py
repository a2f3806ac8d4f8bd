"""Does watching a run slow it? `ar.py process` of the same book, with and without the live view.

A 240-page book (tests/conftest.py text_pages) is OCR'd once; each repetition processes a
fresh copy of it through correct, fix and merge against the local OpenRouter-compatible
server (100 ms latency, 8 workers: a run of a few seconds, busy with its ledger), once
with `tools/monitor.py BOOK --interval 0.2` running in a terminal of its own (a pty, so
rich draws every frame, 80 columns), refreshing more often than the live view's 0.5 s, and
once without, the order alternating between repetitions. The monitor is started first and
waited for (its first frame drawn), so its start-up is not counted in the run's time.
Timed: the wall time of `ar.py process`. The figure is the median, over the repetitions, of
with / without in the same repetition (pairs taken close in time cancel the drift of a
machine shared with other work). Goal: <= 1.0, within the noise of the machine (the runs
also share 2 cores with the local server).
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import ROOT, run_ar, text_pages

PAGES = 240
LATENCY_MS = "100"
WORKERS = "8"
REPS = 7
INTERVAL_S = "0.2"
KEY = "sk-or-bench-local-key"


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tools.openrouter_sim", "--port", "0", "--latency-ms", LATENCY_MS,
                             "--api-key", KEY], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the local server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


class Monitor:
    """tools/monitor.py in a pseudo-terminal of its own; what it draws is read and dropped."""

    def __init__(self, book_id: str, env: dict):
        master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "monitor.py"), book_id,
                                      "--interval", INTERVAL_S], cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=slave, stderr=slave, env={**env, "COLUMNS": "80", "LINES": "30"})
        os.close(slave)
        self.master = master
        self.drawn = threading.Event()
        self.bytes = 0
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.drawn.wait(30):
            raise RuntimeError("the monitor drew nothing in 30 s")

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the monitor has gone: the pty is closed
                return
            if not chunk:
                return
            self.bytes += len(chunk)
            if b"Ctrl-C to quit" in chunk:
                self.drawn.set()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        os.close(self.master)
        return code


def one_run(template: Path, books: Path, name: str, env: dict, watched: bool) -> float:
    shutil.copytree(template, books / name)
    monitor = Monitor(name, env) if watched else None
    t = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "ar.py"), "process", name, "--workers", WORKERS],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"ar.py process {name} failed: {done.stderr.strip()}")
    if monitor is not None:
        drawn = monitor.bytes
        code = monitor.stop()
        if code != 0:
            raise RuntimeError(f"the monitor exited with {code}")
        print(f"  {name}: {seconds:.2f} s, with the monitor ({drawn / 1024:.0f} KiB drawn)")
    else:
        print(f"  {name}: {seconds:.2f} s, alone")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as d:
        tmp = Path(d)
        books = tmp / "books"
        scans = text_pages(tmp / "scans", PAGES)
        for args in (("add", str(scans), "--id", "template"), ("process", "template", "--stages", "ocr")):
            r = run_ar(*args, books_dir=books)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
        template = tmp / "template"
        shutil.move(str(books / "template"), template)
        server, url = start_server()
        env = {**os.environ, "AR_BOOKS_DIR": str(books), "OPENROUTER_BASE_URL": url,
               "OPENROUTER_API_KEY": KEY, "AR_CACHE_DIR": str(tmp / "cache")}
        times: dict[bool, list[float]] = {True: [], False: []}
        try:
            one_run(template, books, "warm-up", env, watched=False)  # price cache, page cache
            print(f"{REPS} repetitions of ar.py process ({PAGES} pages: correct, fix, merge; "
                  f"{LATENCY_MS} ms latency, {WORKERS} workers), alternating")
            for i in range(REPS):
                for watched in ((True, False) if i % 2 else (False, True)):
                    times[watched].append(one_run(template, books, f"r{i}-{'w' if watched else 'a'}", env, watched))
        finally:
            server.terminate()
            server.wait(timeout=10)
    ratios = [w / a for w, a in zip(times[True], times[False])]
    print("with / without, per repetition: " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"median with the monitor {statistics.median(times[True]):.2f} s, "
          f"without {statistics.median(times[False]):.2f} s")
    print(f"ar.py process with the monitor refreshing every {INTERVAL_S} s / without: "
          f"{statistics.median(ratios):.2f} (median of {REPS} pairs; goal <= 1.0 within noise)")


if __name__ == "__main__":
    main()
