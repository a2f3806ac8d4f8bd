"""The executor seam on a real Ray cluster (conftest.ray_cluster: a head and two worker nodes
on 127.0.0.1), with the ledger in a real PostgreSQL."""
import json
import shutil
import signal

import pytest

from tests.conftest import RAY_NODE_KEY, llm_env, run_ar, start_ar, text_pages
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
    held = run_ar("process", "killed", "--stages", "correct", books_dir=books_dir, env=env, timeout=600)
    if query(url, "SELECT bool_or(lease_until > clock_timestamp()) FROM holders WHERE pid = %s", (driver.pid,))[0][0]:
        assert held.returncode == 1 and "held by another writer" in held.stdout  # the dead driver's lease holds
    wait_for(lambda: not query(url, "SELECT bool_or(lease_until > clock_timestamp()) FROM holders WHERE pid = %s",
                               (driver.pid,))[0][0])
    resumed = run_ar("process", "killed", "--stages", "correct", books_dir=books_dir, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(done_pages(url, "killed")) == list(range(1, 7))
    check_fleet(url, server, {"killed": 6})
