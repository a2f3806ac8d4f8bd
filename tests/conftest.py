import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_SCANS = ROOT.parent / "shared" / "real-scans"


def make_book(books_dir: Path, book_id: str, pages: int) -> Path:
    """A book whose source pages are placeholders: for stages that do not read them."""
    source = books_dir / book_id / "source"
    source.mkdir(parents=True)
    for p in range(1, pages + 1):
        (source / f"page_{p:04d}.png").write_bytes(b"")
    return books_dir / book_id


def run_ar(*args: str, books_dir: Path | None = None, env: dict | None = None,
           timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `ar.py` in a process of its own."""
    full_env = dict(os.environ)
    if books_dir is not None:
        full_env["AR_BOOKS_DIR"] = str(books_dir)
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "ar.py"), *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd or ROOT)


@pytest.fixture
def books_dir(tmp_path: Path) -> Path:
    d = tmp_path / "books"
    d.mkdir()
    return d
