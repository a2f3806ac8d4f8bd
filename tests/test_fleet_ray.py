"""The executor seam on a real Ray cluster (conftest.ray_cluster: a head and two worker nodes
on 127.0.0.1), with the ledger in a real PostgreSQL."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from infra.errors import LeaseLost
from infra.pg_ledger import PgLedger, PgLibrary
from pipeline.executor import BookLedgers, OcrSlots, connect_ray
from pipeline.llm_stage import LedgerRecorder
from tests.conftest import RAY_NODE_KEY, llm_env, noting_tesseract, one_error_line, run_ar, start_ar, text_pages
from tests.test_fleet import check_fleet, done_pages, fleet_book, pending, query, wait_for

pytestmark = pytest.mark.fleet


def test_ocr_pages_run_as_ray_tasks_and_read_as_they_do_here(ray_cluster, books_dir, tmp_path, pg_url):
    scans = text_pages(tmp_path / "scans", 6)
    assert run_ar("add", str(scans), "--id", "b", books_dir=books_dir).returncode == 0
    shutil.copytree(books_dir / "b", books_dir / "here")
    fleet = {"AR_LEDGER": pg_url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.address}
    r = run_ar("process", "b", "--stages", "ocr", books_dir=books_dir, env=fleet, timeout=600)
    assert r.returncode == 0, r.stderr
    assert run_ar("process", "here", "--stages", "ocr", books_dir=books_dir).returncode == 0

    read_on_nodes = ray_cluster.tesseract_log.read_text().split()
    for page in range(1, 7):  # every page was read by a task on a worker node, none here
        assert str(books_dir / "b" / "source" / f"page_{page:04d}.png") in read_on_nodes
    assert not any("/here/" in image for image in read_on_nodes)
    for page in range(1, 7):
        name = f"page_{page:04d}.json"
        assert json.loads((books_dir / "b" / "ocr" / name).read_text()) == \
            json.loads((books_dir / "here" / "ocr" / name).read_text())
    status = json.loads(run_ar("status", "b", "--json", books_dir=books_dir, env=fleet).stdout)
    assert status["stages"]["ocr"]["done"] == 6
    assert not (books_dir / "b" / "checkpoint.db").exists()


def test_ocr_gives_ray_no_more_tasks_than_the_cluster_has_cpus(ray_cluster, monkeypatch):
    """A task beyond the free CPUs waits for a lease, which Ray bounces between the head's
    raylet (no CPU here, as on many clusters), the driver and a busy node many times a second:
    the run's bound on OCR pages in flight is the cluster's CPUs, whatever --workers allows."""
    import ray

    monkeypatch.setenv("AR_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    try:
        cpus = int(connect_ray().cluster_resources()["CPU"])
        assert cpus >= 2
        assert OcrSlots(32).size == cpus
        assert OcrSlots(1).size == 1
    finally:
        ray.shutdown()


def test_the_driver_killed_its_actors_finish_and_record_their_calls_and_a_new_driver_resumes(
        ray_cluster, sim, books_dir, tmp_path):
    url = ray_cluster.ledger_url
    fleet_book(books_dir, tmp_path, url, "killed", 6)
    server = sim("--api-key", RAY_NODE_KEY, "--latency-ms", "2000", "--jitter-ms", "500")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.address,
           "AR_LEASE_S": "4"}
    with open(tmp_path / "driver.err", "w") as log:
        driver = start_ar("process", "killed", "--stages", "correct", books_dir=books_dir, env=env, stderr=log)
    try:
        wait_for(lambda: pending(url) >= 3 or driver.poll() is not None, timeout=180)  # calls in flight in the actors
    finally:
        print((tmp_path / "driver.err").read_text()[-3000:])  # shown if the test fails
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    in_flight = pending(url)
    wait_for(lambda: pending(url) == 0, timeout=120)  # no driver: the actors finish them and record them
    assert in_flight >= 1
    # run again at once: the pages the dead driver held are waited for until its lease lapses
    resumed = run_ar("process", "killed", "--stages", "correct", books_dir=books_dir, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(done_pages(url, "killed")) == list(range(1, 7))
    check_fleet(url, server, {"killed": 6})


def processes_with(marker: str) -> dict[int, tuple[str, str]]:
    """pid -> (name, command line) of each live process whose environment holds `marker`:
    whatever a process started, and they started, inherited it."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "environ").read_bytes() and " Z " not in (proc / "stat").read_text():
                found[int(proc.name)] = ((proc / "comm").read_text().strip(),
                                         (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # it ended meanwhile
            continue
    return found


def holding_files_in(folder: Path) -> set[int]:
    """The pids of the live processes that hold a file open in `folder`: those that set their
    title (Ray's agents) blank the environment that processes_with reads, not their files."""
    found = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd).startswith(f"{folder}/"):
                found.add(int(fd.parts[2]))
        except OSError:  # it ended meanwhile
            continue
    return found


def own_ray_folder(raylet: str) -> Path:
    """The folder of the Ray whose raylet has the command line `raylet`."""
    return Path(re.search(r"--temp-dir=(\S+)", raylet).group(1))


def ocr_done_once(url: str, book: str, pages: int) -> None:
    rows = query(url, "SELECT page, attempts FROM pages WHERE book = %s AND stage = 'ocr' AND status = 'done'", (book,))
    assert sorted(rows) == [(p, 1) for p in range(1, pages + 1)]


def test_without_ray_address_ar_starts_its_own_ray_on_loopback_and_stops_it(ray_cluster, sim, books_dir, tmp_path,
                                                                           pg_url):
    """The session's cluster is up (and noted as this machine's latest Ray): ar must not use it."""
    scans = text_pages(tmp_path / "scans", 2)
    assert run_ar("add", str(scans), "--id", "own", books_dir=books_dir, env={"AR_LEDGER": pg_url}).returncode == 0
    server = sim("--api-key", RAY_NODE_KEY, "--latency-ms", "20")
    marker = uuid.uuid4().hex
    home = tmp_path / "home"
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": "",
           "AR_TEST_RUN": marker, "HOME": str(home)}
    seen: dict[int, tuple[str, str]] = {}
    running = True

    def watch():  # the run's processes, while it runs
        while running:
            seen.update(processes_with(marker))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = run_ar("process", "own", books_dir=books_dir, env=env, timeout=240)
    finally:
        running = False
        watcher.join()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr

    raylets = [cmd for name, cmd in seen.values() if name == "raylet"]
    assert len(raylets) == 1 and "--node_ip_address=127.0.0.1 " in raylets[0]  # its own Ray, kept on loopback
    assert {"gcs_server", "raylet"} <= {name for name, _ in seen.values()}
    assert not any("dashboard/dashboard.py" in cmd and "--minimal" not in cmd for _, cmd in seen.values())
    assert not (home / ".ray").exists()  # its token lives in its processes' environment, not under $HOME
    assert not ray_cluster.tesseract_log.exists() or "/own/" not in ray_cluster.tesseract_log.read_text()
    wait_for(lambda: not processes_with(marker), timeout=20)  # nothing of the run outlives it
    folder = own_ray_folder(raylets[0])
    assert not holding_files_in(folder) and not folder.exists()  # its agents either, nor its files

    ocr_done_once(pg_url, "own", 2)
    assert sorted(done_pages(pg_url, "own")) == [1, 2]
    check_fleet(pg_url, server, {"own": 2})
    assert (books_dir / "own" / "book.md").is_file()


def test_its_own_ray_dies_with_a_killed_driver_and_a_rerun_finishes(sim, books_dir, tmp_path, pg_url):
    """SIGKILL leaves ar no moment to stop its Ray: every process of it (GCS, raylet, workers,
    the detached LLM actors, Ray's agents, a tesseract that an OCR task started) must still go,
    and a rerun settle the calls cut and finish the book."""
    scans = text_pages(tmp_path / "scans", 3)
    assert run_ar("add", str(scans), "--id", "orphan", books_dir=books_dir, env={"AR_LEDGER": pg_url}).returncode == 0
    slow = tmp_path / "slow-bin"  # page 3's reading takes long: it runs when the driver is killed
    slow.mkdir()
    (slow / "tesseract").write_text(f'#!/bin/sh\ncase "$1" in *page_0003*) sleep 60;; esac\n'
                                    f'exec {shutil.which("tesseract")} "$@"\n')
    (slow / "tesseract").chmod(0o755)
    server = sim("--latency-ms", "1500")
    marker = uuid.uuid4().hex
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": "",
           "HOME": str(tmp_path / "home"), "AR_LEASE_S": "8"}
    with open(tmp_path / "driver.out", "w") as log:
        driver = start_ar("process", "orphan", books_dir=books_dir, stdout=log, stderr=subprocess.STDOUT,
                          env={**env, "AR_TEST_RUN": marker, "PATH": f"{slow}:{os.environ['PATH']}"})

    def calling_and_reading():
        names = {name for name, _ in processes_with(marker).values()}
        return "sleep" in names and pending(pg_url) >= 1 or driver.poll() is not None  # the ledger is there by then

    wait_for(calling_and_reading, timeout=120)
    assert driver.poll() is None, (tmp_path / "driver.out").read_text()
    folder = own_ray_folder(next(cmd for name, cmd in processes_with(marker).values() if name == "raylet"))
    assert folder != Path("/tmp/ray") and len(holding_files_in(folder)) > 5  # a Ray of the run's own, in its own folder
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    try:
        wait_for(lambda: not processes_with(marker) and not holding_files_in(folder), timeout=30)  # nothing of it lives
    finally:
        for pid, (name, cmd) in processes_with(marker).items():  # shown if the test fails; then gone
            print(pid, name, cmd[:200])
            os.kill(pid, signal.SIGKILL)
        for pid in holding_files_in(folder):
            print(pid, Path(f"/proc/{pid}/comm").read_text())
            os.kill(pid, signal.SIGKILL)
    assert not folder.exists()  # its logs and sockets go with it

    wait_for(lambda: not query(pg_url, "SELECT bool_or(lease_until > clock_timestamp()) FROM holders")[0][0],
             timeout=20)
    resumed = run_ar("process", "orphan", books_dir=books_dir, env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sorted(done_pages(pg_url, "orphan")) == [1, 2, 3]
    check_fleet(pg_url, server, {"orphan": 3})
    assert (books_dir / "orphan" / "book.md").is_file()


def readings(logs: list[Path], book: str) -> tuple[int, list[str]]:
    """From noting tesseracts' logs: the most pages of `book` read at once, and those whose
    reading started and has not ended."""
    edges, open_ = [], {}
    for log in logs:
        for line in (log.read_text().splitlines() if log.exists() else []):
            mark, time, image = line.split(maxsplit=2)
            if f"/{book}/" in image:
                edges.append((float(time), 1 if mark == "S" else -1))
                open_[image] = open_.get(image, 0) + (1 if mark == "S" else -1)
    running = most = 0
    for _, step in sorted(edges):
        running += step
        most = max(most, running)
    return most, [image for image, n in open_.items() if n > 0]


def test_a_worker_node_killed_mid_run_its_pages_go_to_the_others_once(ray_cluster, sim, books_dir, tmp_path):
    """A node joins the session's cluster, so that it has more CPUs than this machine has cores
    (OCR is bounded by what the cluster schedules, not by the driver's cores), and is killed
    while it reads a page; the run finishes on the others."""
    url = ray_cluster.ledger_url
    scans = text_pages(tmp_path / "scans", 10)
    assert run_ar("add", str(scans), "--id", "lost", books_dir=books_dir, env={"AR_LEDGER": url}).returncode == 0
    bin_dir = tmp_path / "node-bin"
    bin_dir.mkdir()
    log = noting_tesseract(bin_dir, slow_s=2)  # a slow node: its readings last long enough to be cut
    cores = os.cpu_count() or 1
    node = ray_cluster.add_node(num_cpus=cores, node_ip_address="127.0.0.1",
                                env_vars={**ray_cluster.node_env, "PATH": f"{bin_dir}:{ray_cluster.node_env['PATH']}"})
    server = sim("--api-key", RAY_NODE_KEY, "--latency-ms", "50")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.address}
    try:
        driver = start_ar("process", "lost", "--stages", "ocr,correct", books_dir=books_dir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def more_than_cores_and_one_there():
            most, _ = readings([log, ray_cluster.tesseract_log], "lost")
            return most > cores and readings([log], "lost")[1]

        wait_for(lambda: more_than_cores_and_one_there() or driver.poll() is not None, timeout=120)
        assert driver.poll() is None, driver.communicate()  # more pages at once than this machine has cores
        cut = readings([log], "lost")[1]
        ray_cluster.remove_node(node, allow_graceful=False)  # its raylet, object store, workers: killed
        node = None
        out, err = driver.communicate(timeout=240)
    finally:
        if node is not None:
            ray_cluster.remove_node(node)
    assert driver.returncode == 0, out + err
    assert cut  # the node died reading pages; they were read again elsewhere, and each done once
    ocr_done_once(url, "lost", 10)
    assert sorted(done_pages(url, "lost")) == list(range(1, 11))
    check_fleet(url, server, {"lost": 10})


def test_two_drivers_on_ray_share_one_library_budget(ray_cluster, sim, books_dir, tmp_path):
    """Two drivers, their calls made by the same Ray actors, under the database's library cap."""
    url = ray_cluster.ledger_url
    for book in ("lib1", "lib2"):
        text_pages(tmp_path / "shelf" / book, 5)
    for args in (("add", str(tmp_path / "shelf")), ("process", "lib1", "lib2", "--stages", "ocr")):
        r = run_ar(*args, books_dir=books_dir, env={"AR_LEDGER": url})
        assert r.returncode == 0, r.stderr
    server = sim("--api-key", RAY_NODE_KEY, "--latency-ms", "100", "--jitter-ms", "300")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.address}
    library = PgLibrary.open(url, create=True)
    before = library.figures()["spent_usd"]  # the shared database's earlier tests
    cap = 0.0035
    library.set_limit(before + cap)
    try:
        procs = [start_ar("process", book, "--stages", "correct", "--workers", "2", books_dir=books_dir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for book in ("lib1", "lib2")]
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        library.set_limit(None)  # the later tests' calls are not capped
        library.close()
    codes = [p.returncode for p in procs]
    assert 3 in codes and set(codes) <= {0, 3}, outputs
    budgets = check_fleet(url, server, {"lib1": 5, "lib2": 5})
    spent = budgets["book:lib1"]["spent_usd"] + budgets["book:lib2"]["spent_usd"]
    assert spent <= cap and budgets["library"]["spent_usd"] == pytest.approx(before + spent)
    assert budgets["book:lib1"]["spent_usd"] > 0 and budgets["book:lib2"]["spent_usd"] > 0  # both had a share
    assert len(done_pages(url, "lib1")) + len(done_pages(url, "lib2")) < 10  # the cap stopped them


def live_holders(url: str, books: list[str], but_pid: int = 0) -> dict[int, int]:
    """pid -> how many of `books` it holds a live writer's lease on (the writer of pid `but_pid` left out)."""
    return dict(query(url, "SELECT pid, COUNT(*) FROM holders WHERE book = ANY(%s) AND pid != %s"
                           " AND lease_until > clock_timestamp() GROUP BY pid", (books, but_pid)))


def test_an_actor_keeps_its_bound_of_books_open_closing_none_in_use_and_opens_a_closed_one_again(pg_url):
    ledgers = BookLedgers(lambda book: PgLedger.open_writer(pg_url, book), most=2)

    def open_books():
        return sorted(b for (b,) in query(pg_url, "SELECT book FROM holders WHERE lease_until > clock_timestamp()"))

    a = ledgers.take("a")  # a call for book a in flight
    for book in ("b", "c"):
        ledgers.take(book)
        ledgers.release(book)
    assert open_books() == ["a", "c"]  # b closed: idle and the least recently used
    run = a.start_run(os.getpid(), "test")
    recorder = ledgers.recorder("a", lambda ledger: LedgerRecorder(ledger, run, "correct", 1))
    handle = recorder.begin("m", 1)
    ledgers.release("a")
    ledgers.release("a")  # both calls returned; the attempt, cut mid-answer, is still to settle
    ledgers.take("d")
    ledgers.release("d")
    assert open_books() == ["a", "d"]  # c closed, not a: its pending call is not left to a sweeper
    assert PgLedger.read(pg_url, "a", lambda ledger: ledger.orphaned_calls(), None) == []
    recorder.finish(handle, "ok", None, 0.25, None, None, "gen-1")
    ledgers.take("b")  # opened again, as a new holder; a, settled and least recently used, closed
    assert open_books() == ["b", "d"]
    assert query(pg_url, "SELECT COUNT(*) FROM holders WHERE book = 'b'")[0][0] == 2
    assert query(pg_url, "SELECT status, computed_cost_usd::float8 FROM calls WHERE book = 'a'") == [("ok", 0.25)]
    ledgers.release("b")
    ledgers.close()
    assert open_books() == []


def test_an_actor_opens_again_a_book_whose_lease_lapsed(pg_url):
    """The ledger out of reach past the lease: the actor's writer for a book refuses every call
    from then on. The actors are detached and serve the next run too: it must get a new one."""
    ledgers = BookLedgers(lambda book: PgLedger.open_writer(pg_url, book), most=2)
    lapsed = ledgers.take("a")
    run = lapsed.start_run(os.getpid(), "test")
    ledgers.release("a")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE holders SET lease_until = clock_timestamp() - interval '1 second' WHERE holder_id = %s",
                     (lapsed.holder_id,))
    with pytest.raises(LeaseLost):  # how a writer learns it: its next fenced write
        LedgerRecorder(lapsed, run, "correct", 1).begin("m", 1)
    again = ledgers.take("a")
    assert again is not lapsed and again.holder_id != lapsed.holder_id
    recorder = ledgers.recorder("a", lambda ledger: LedgerRecorder(ledger, run, "correct", 1))
    recorder.finish(recorder.begin("m", 1), "ok", None, 0.25, None, None, "gen-1")
    assert query(pg_url, "SELECT status, holder_id FROM calls WHERE book = 'a'") == [("ok", again.holder_id)]
    ledgers.release("a")
    ledgers.release("a")
    ledgers.close()


def test_an_llm_actor_serving_a_library_keeps_its_bound_of_books_open(ray_cluster, sim, books_dir, tmp_path):
    """Six books in one run through Ray: each LLM actor serves most of them, and keeps at most
    AR_ACTOR_BOOKS (2 on the session's cluster) of their ledgers open at any time, each a holder
    with a lease and connections; every call still recorded as billed."""
    url = ray_cluster.ledger_url
    books = [f"shelf{i}" for i in range(6)]
    for book in books:
        text_pages(tmp_path / "shelf" / book, 2)
    for args in (("add", str(tmp_path / "shelf")), ("process", *books, "--stages", "ocr")):
        r = run_ar(*args, books_dir=books_dir, env={"AR_LEDGER": url})
        assert r.returncode == 0, r.stderr
    server = sim("--api-key", RAY_NODE_KEY, "--latency-ms", "50")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.address}
    driver = start_ar("process", *books, "--stages", "correct", "--workers", "2", books_dir=books_dir, env=env,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    most: dict[int, int] = {}  # actor's pid -> the most books it held open at once
    while driver.poll() is None:
        for pid, held in live_holders(url, books, driver.pid).items():
            most[pid] = max(most.get(pid, 0), held)
        time.sleep(0.1)
    out, err = driver.communicate()
    assert driver.returncode == 0, out + err
    for pid, held in live_holders(url, books, driver.pid).items():  # idle now, not yet exited
        most[pid] = max(most.get(pid, 0), held)
    assert len(most) == 2 and set(most.values()) == {2}, most  # both actors served several books, 2 at a time
    served = query(url, "SELECT h.pid, COUNT(DISTINCT c.book) FROM calls c JOIN holders h USING (holder_id)"
                        " WHERE c.book = ANY(%s) GROUP BY h.pid", (books,))
    assert sorted(pid for pid, _ in served) == sorted(most) and all(n > 2 for _, n in served), served
    assert {book: sorted(done_pages(url, book)) for book in books} == {book: [1, 2] for book in books}
    check_fleet(url, server, {book: 2 for book in books})
    for book in books:  # the actors' attempts are in each book's run log, as a local run's are
        log = json.loads(run_ar("log", book, "--json", books_dir=books_dir, env={"AR_LEDGER": url}).stdout)
        calls = query(url, "SELECT COUNT(*) FROM calls WHERE book = %s AND run_id = %s", (book, log["run"]))[0][0]
        assert log["attempts"] == calls >= 2, (book, log)


def test_a_ray_address_ar_cannot_use_is_one_line_said_at_once_before_any_run(books_dir, tmp_path, pg_url):
    """Ray itself waits about 3 minutes for a head that does not answer."""
    scans = text_pages(tmp_path / "scans", 1)
    assert run_ar("add", str(scans), "--id", "b", books_dir=books_dir, env={"AR_LEDGER": pg_url}).returncode == 0
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    for address, reason in ((dead, "Connection refused"), ("no-port-here", "not an address Ray takes")):
        started = time.monotonic()
        r = run_ar("process", "b", "--stages", "ocr", books_dir=books_dir,
                   env={"AR_LEDGER": pg_url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": address})
        assert time.monotonic() - started < 30
        assert r.returncode == 1
        assert reason in one_error_line(r, f"cannot reach the Ray cluster at RAY_ADDRESS={address}: ")
    assert PgLedger.read(pg_url, "b", lambda ledger: ledger.runs(), []) == []  # refused before any run opened


def test_a_cluster_whose_nodes_lack_ar_ledger_or_have_a_bad_setting_stops_the_run_in_one_line(
        ray_cluster, sim, books_dir, tmp_path):
    """The LLM actors read AR_LEDGER from their node's environment: here the driver's job gives
    them an empty one (as `ray job submit --runtime-env-json` would), the session's cluster
    stays as it is."""
    url = ray_cluster.ledger_url
    fleet_book(books_dir, tmp_path, url, "nodeenv", 1)
    server = sim("--api-key", RAY_NODE_KEY)  # its own endpoint: actors of their own
    job = {"runtime_env": {"env_vars": {"AR_LEDGER": ""}}}
    env = {**llm_env(server, tmp_path), "AR_LEDGER": url, "AR_EXECUTOR": "ray", "RAY_ADDRESS": ray_cluster.address,
           "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job), "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    r = run_ar("process", "nodeenv", "--stages", "correct", books_dir=books_dir, env=env, timeout=300)
    assert r.returncode == 1
    assert "every node needs OPENROUTER_API_KEY and AR_LEDGER" in one_error_line(r, "AR_LEDGER not set on the Ray node")
    assert query(url, "SELECT COUNT(*) FROM calls WHERE book = 'nodeenv'") == [(0,)]  # nothing sent, nothing paid
    assert server.credits() == 0  # the provider billed nothing
    assert sorted(done_pages(url, "nodeenv", "ocr")) == [1]  # the pages done before are kept

    job["runtime_env"]["env_vars"] = {"AR_TIMEOUT": "-1"}  # a setting the actor cannot start with
    server = sim("--api-key", RAY_NODE_KEY)
    env.update(llm_env(server, tmp_path), RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job))
    r = run_ar("process", "nodeenv", "--stages", "correct", books_dir=books_dir, env=env, timeout=300)
    assert r.returncode == 1
    assert "AR_TIMEOUT" in one_error_line(r, "failed: an LLM actor could not start: ")
