"""Durable files: a write either happens whole or not at all, and survives a crash."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

TEMP_MARK = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync, rename.

    A crash at any instant leaves either the old file or the new one, never a torn one.
    """
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(directory: Path, older_than_s: float = 0.0) -> int:
    """Delete temp files a killed writer left behind, those last written over `older_than_s`
    ago (0: every one, for a writer alone in the book); returns how many."""
    if not directory.is_dir():
        return 0
    before = time.time() - older_than_s
    leftovers = [p for p in directory.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name
                 and (not older_than_s or _mtime(p) < before)]
    for p in leftovers:
        p.unlink(missing_ok=True)
    return len(leftovers)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # renamed into place meanwhile
        return float("inf")
