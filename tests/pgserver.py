"""A real PostgreSQL server for the tests: initdb in a temporary folder, a free port, its unix
socket in that folder, no fsync (the tests kill it, they do not pull the plug). initdb and
pg_ctl refuse to run as root: as root they run as the `postgres` user (runuser)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self):
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: run tools/bootstrap.sh")
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ar-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = _free_port()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run([*prefix, *args], capture_output=True, text=True, check=check, cwd=self.root)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.root}&port={self.port}"

    def start(self) -> PgServer:
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8", "--locale=C")
        options = f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart_immediate(self) -> None:
        """The server killed as by a crash (no clean shutdown), then started again: it recovers."""
        self.stop("immediate")
        self.start()

    def new_database(self) -> str:
        """A fresh, empty database on this server: its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def terminate_all(self, dbname: str) -> int:
        """Kill every connection to `dbname` (pg_terminate_backend): how many there were."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            return conn.execute("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                " WHERE datname = %s AND pid != pg_backend_pid()", (dbname,)).fetchone()[0]

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
