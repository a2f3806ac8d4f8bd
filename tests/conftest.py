import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_SCANS = ROOT / "tests" / "data" / "real-scans"


def make_book(books_dir: Path, book_id: str, pages: int) -> Path:
    """A book whose source pages are placeholders: for stages that do not read them."""
    source = books_dir / book_id / "source"
    source.mkdir(parents=True)
    for p in range(1, pages + 1):
        (source / f"page_{p:04d}.png").write_bytes(b"")
    return books_dir / book_id


def _ar_env(books_dir: Path | None, env: dict | None) -> dict:
    full_env = dict(os.environ)
    if books_dir is not None:
        full_env["AR_BOOKS_DIR"] = str(books_dir)
    full_env.update(env or {})
    return full_env


def run_ar(*args: str, books_dir: Path | None = None, env: dict | None = None,
           timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `ar.py` in a process of its own."""
    return subprocess.run([sys.executable, str(ROOT / "ar.py"), *args], capture_output=True,
                          text=True, env=_ar_env(books_dir, env), timeout=timeout, cwd=cwd or ROOT)


def start_ar(*args: str, books_dir: Path | None = None, env: dict | None = None,
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen) -> subprocess.Popen:
    """Start the real `ar.py` and return at once: for tests that signal or kill it."""
    return subprocess.Popen([sys.executable, str(ROOT / "ar.py"), *args], env=_ar_env(books_dir, env),
                            cwd=ROOT, stdout=stdout, stderr=stderr, **popen)


def one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """One line says what went wrong, with one of `needles`: `ar: error: ...` on stderr, or for a
    run that stopped, its outcome `failed: ...` in the summary; no traceback, no second error."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("ar: error: ")]
    errors += [line for line in r.stdout.splitlines() if line.startswith("failed: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert any(n in errors[0] for n in needles), errors[0]
    return errors[0]


def llm_env(server, tmp_path: Path, **extra: str) -> dict:
    """Settings that point ar at a local server `server` (tests/simserver.py), with its key."""
    return {"OPENROUTER_BASE_URL": server.url, "OPENROUTER_API_KEY": server.key,
            "AR_CACHE_DIR": str(tmp_path / "cache"), **extra}


@pytest.fixture
def ledger(tmp_path: Path):
    """A book's ledger, open for writing, with a run started (its id in `ledger.run`)."""
    from infra.checkpoint import Ledger

    led = Ledger.open_writer(tmp_path / "checkpoint.db")
    led.run = led.start_run(os.getpid(), "test")
    yield led
    led.close()


@pytest.fixture
def books_dir(tmp_path: Path) -> Path:
    d = tmp_path / "books"
    d.mkdir()
    return d


def text_pages(folder: Path, count: int, misread: bool = False) -> Path:
    """`count` small page images of real prose (the sample's true text), quick to OCR; `misread`:
    printed with OCR-like errors ("tbe", "tirne") that a correction fixes, unsure of the page."""
    from PIL import Image, ImageDraw, ImageFont

    from tools.make_sample import find_font

    font = ImageFont.truetype(str(find_font()), 30)
    words = (ROOT / "books" / "sample" / "truth" / "book.md").read_text().split()[3:]
    if misread:
        words = [w.replace("the", "tbe").replace("m", "rn") for w in words]
    folder.mkdir(parents=True)
    for n in range(count):
        start = (n * 37) % (len(words) - 40)
        lines = [" ".join(words[start + i * 8:start + i * 8 + 8]) for i in range(4)]
        page = Image.new("L", (1100, 300), 255)
        ImageDraw.Draw(page).multiline_text((30, 30), "\n".join(lines), font=font, fill=0, spacing=18)
        page.save(folder / f"p{n + 1:03d}.png")
    return folder


@pytest.fixture(scope="session")
def ocr_book(tmp_path_factory):
    """make(books_dir, book_id): a copy of a 120-page book whose OCR is done (done once)."""
    import shutil

    template = tmp_path_factory.mktemp("ocr-book")
    scans = text_pages(template / "scans", 120)
    for args in (("add", str(scans), "--id", "book"), ("process", "book", "--stages", "ocr")):
        r = run_ar(*args, books_dir=template / "books")
        assert r.returncode == 0, r.stderr

    def make(books_dir: Path, book_id: str = "book") -> Path:
        return Path(shutil.copytree(template / "books" / "book", books_dir / book_id))

    return make


from tests.simserver import sim  # noqa: E402,F401  (the `sim` fixture, for every test module)


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server shared by the whole test run (tests/pgserver.py)."""
    from tests.pgserver import PgServer

    server = PgServer().start()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh database on the shared server, for one test."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_backend(request, monkeypatch) -> str:
    """Each test that takes it runs twice: on each book's checkpoint.db, and with every ledger
    in PostgreSQL (AR_LEDGER set, as `--ledger` sets it)."""
    if request.param == "postgresql":
        monkeypatch.setenv("AR_LEDGER", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("AR_LEDGER", raising=False)
    return request.param


RAY_NODE_KEY = "sk-or-v1-ray-node-0123456789abcdef"  # the key the Ray nodes' environment holds


def noting_tesseract(folder: Path, slow_s: float = 0) -> Path:
    """A `tesseract` in `folder` that runs the real one and notes in `folder`/tesseract.log
    each image it reads, as `S time image` when it starts and `E time image` when it ends;
    `slow_s` seconds later than the real one (a slow machine)."""
    import shutil

    log = folder / "tesseract.log"
    (folder / "tesseract").write_text(f'#!/bin/sh\necho "S $(date +%s.%N) $1" >> {log}\nsleep {slow_s}\n'
                                      f'{shutil.which("tesseract")} "$@"\ncode=$?\n'
                                      f'echo "E $(date +%s.%N) $1" >> {log}\nexit $code\n')
    (folder / "tesseract").chmod(0o755)
    return log


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, pg_server):
    """A real Ray cluster shared by the whole test run: a head with no CPU of its own and two
    worker nodes of one core each, on 127.0.0.1 (kept as it is: not rewritten to the host's
    address), without token auth (loopback only). On the worker nodes `tesseract` is the real
    one behind a wrapper that notes each image it reads in `cluster.tesseract_log`, so a test
    sees which pages the nodes read, and when."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    wrapper = tmp_path_factory.mktemp("node-bin")
    log = noting_tesseract(wrapper)
    # what each node's environment gives the LLM actors: the key and the ledger (never task arguments)
    import psycopg

    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE fleet TEMPLATE template0")
    node_env = {"PATH": f"{wrapper}:{os.environ['PATH']}", "OPENROUTER_API_KEY": RAY_NODE_KEY,
                "AR_LEDGER": pg_server.url("fleet"), "AR_CACHE_DIR": str(wrapper / "cache"),
                "AR_ACTOR_IDLE_S": "20", "AR_ACTOR_BOOKS": "2"}  # the books' ledgers an LLM actor keeps open
    # a node killed is known dead in about 3 s (not Ray's 15 s): the tasks it ran are retried that much sooner
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    # and the head's settings the README gives a cluster's operator: the scenarios run under them
    from pipeline.executor import RAY_SYSTEM_CONFIG

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "env_vars": node_env,
                                                            "_system_config": {**health, **RAY_SYSTEM_CONFIG}})
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars=node_env)
    cluster.wait_for_nodes()
    cluster.tesseract_log = log
    cluster.node_env = node_env  # for a node a test adds (and removes) itself
    cluster.ledger_url = node_env["AR_LEDGER"]
    yield cluster
    cluster.shutdown()
