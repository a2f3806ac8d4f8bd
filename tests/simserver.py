"""The local OpenRouter-compatible server (tools/openrouter_sim.py) as a real process, for tests."""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT


class Sim:
    def __init__(self, *args: str, env: dict | None = None):
        self.args, self.env = args, None if env is None else {**os.environ, **env}
        self.key = args[args.index("--api-key") + 1] if "--api-key" in args else "sk-or-any"
        self._start("0")

    def _start(self, port: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.openrouter_sim", "--port", port, *self.args],
                                     cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"the local server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.removeprefix("listening on ")

    def restart(self) -> None:
        """A new life on the same port (after `kill`); with --state it keeps its bill."""
        self.stop()
        self._start(self.url.rsplit(":", 1)[1].split("/")[0])

    def _get(self, path: str) -> dict:
        r = httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
        r.raise_for_status()
        return r.json()

    def credits(self) -> float:
        """Everything the server billed (what OpenRouter's /credits calls total_usage)."""
        return self._get("/credits")["data"]["total_usage"]

    def key_info(self) -> dict:
        """GET /key: what the key was charged (`usage`) and, with --byok, what providers billed
        to the user's own keys (`byok_usage`)."""
        return self._get("/key")["data"]

    def generations(self) -> dict:
        return self._get("/sim/generations")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def sim():
    """A factory: sim("--latency-ms", "50") starts a server (`env=`: variables added to its
    environment); all are stopped at teardown."""
    started: list[Sim] = []

    def start(*args: str, env: dict | None = None) -> Sim:
        server = Sim(*args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
