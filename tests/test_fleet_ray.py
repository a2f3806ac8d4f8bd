"""The executor seam on a real Ray cluster (conftest.ray_cluster: a head and two worker nodes
on 127.0.0.1), with the ledger in a real PostgreSQL."""
import json
import shutil

import pytest

from tests.conftest import run_ar, text_pages

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
