"""The local server listens on loopback only: it bills, and it takes any key by default.
(That the API key reaches no file, log or output after a run is checked after the SIGKILL
torture, tests/torture/test_kills.py, and after a clean run, tests/test_pipeline.py.)"""
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", ""])
def test_the_local_server_refuses_to_bind_anything_but_loopback(host):
    r = subprocess.run([sys.executable, "-m", "tools.openrouter_sim", "--host", host, "--port", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "is not a loopback address" in r.stderr and "listening" not in r.stdout


def test_the_local_server_binds_loopback_by_default(sim):
    assert sim().url.startswith("http://127.0.0.1:")
