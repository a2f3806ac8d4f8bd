"""One writer per book: an advisory lock (flock) on books/<id>/writer.lock.

The kernel drops a flock when its process dies, however it dies, so a crashed writer's
lock is free for the next run at once: no stale-pid guessing. The file names the holder
so that a refused second writer can say who holds it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from infra.errors import BookLocked


class WriterLock:
    def __init__(self, path: Path, book_id: str):
        self.path = path
        self.book_id = book_id
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.read(fd, 4096))
                os.close(fd)
                raise BookLocked(
                    f"book {self.book_id!r} is being processed by {holder}; "
                    "wait for it to finish or stop it (Ctrl-C) first", holder
                ) from None
            # The previous holder may have unlinked the file between our open and flock:
            # then we locked an orphan inode, and must start over on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so no one can lock the name we are removing.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def process_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether the process `pid` still runs (one on another host, `host`: assumed so)."""
    if host is not None and host != socket.gethostname():
        return True
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    return True
