"""OCR pages per second through Ray against bare tesseract on the same cores.

A local Ray cluster (ray.cluster_utils.Cluster: a head with no CPU and the system config the
README gives a cluster's operator, and one worker node of one core per core of this machine,
on 127.0.0.1) runs ar's OCR stage (process_book with
AR_EXECUTOR=ray: each page a Ray task of one core). The nodes share this machine's cores, so
this measures what Ray costs (task submission, scheduling, object transfer, the worker's
Python), not a speed-up. The reference: the bare `tesseract IMG stdout -l eng tsv`, one
thread each (OMP_THREAD_LIMIT=1), as many at a time as there are cores; and ar's OCR stage
run here without Ray (AR_EXECUTOR unset), as a second reference. Ray's own cost, alone: the
same bare command run as ar runs a page's work on Ray (pipeline/executor.py's page_runner,
as many tasks in flight as OcrSlots gives), against the bare command here. ar's OCR does more
than the bare command (it levels and turns pages, reads the margins: bench/ocr_orientation.py),
which the first figure counts and this one does not.

The sample book's pages (tools.make_sample), repeated to about 20 pages. ar connects to the
cluster and warms its workers once before anything is timed (a run of 2 pages): a fleet's
run lasts hours, its start-up is not its throughput. Each configuration runs RUNS times,
alternating; the best run counts. Goal: the bare command as Ray tasks >= 0.9 of it here.

The same cost in CPU time, which the machine's other load moves much less than the rates:
what Ray's processes and the driver spent a page while the bare command ran as Ray tasks,
against what the bare command spent a page; the pages' share of the cores is the second's
part of the sum (what the rates' ratio reads on a machine with nothing else to do). Then the
same two on a Ray that ar starts itself (no RAY_ADDRESS: one node, this machine's cores).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ocr_throughput import CORES, ROOT, SAMPLE, bare, make_book, tesseract
from infra.books import Book
from pipeline.executor import RAY_SYSTEM_CONFIG, OcrSlots, page_runner
from pipeline.process import process_book
from pipeline.registry import STAGES

RUNS = 3


def ar_ocr(book: Book) -> float:
    start = time.perf_counter()
    outcome = process_book(book, STAGES.select(["ocr"]), workers=CORES)
    seconds = time.perf_counter() - start
    if outcome.status != "done":
        raise RuntimeError(f"ar: {outcome.status} {outcome.message}")
    return seconds


async def _bare_page(image: str) -> None:
    tesseract(Path(image), {**os.environ, "OMP_THREAD_LIMIT": "1"})


def bare_on_ray(run, images: list[Path]) -> float:
    """Seconds for the bare command on every page, each a Ray task as ar runs a page's work
    (`run`: page_runner's, made once, as a run makes it once)."""
    slots = OcrSlots(CORES)  # ar's own bound, as a run makes it

    async def one(image: Path) -> None:
        async with slots:
            await run(str(image))

    async def every_page() -> None:
        await asyncio.gather(*map(one, images))

    start = time.perf_counter()
    asyncio.run(every_page())
    return time.perf_counter() - start


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float]:
    """(Ray's, tesseract's) CPU seconds so far, from /proc. Ray's: the own time of this
    process (the driver) and of every process it started and they started (the cluster's
    raylets, GCS, agents, log monitors and workers). Tesseract's: what those processes count
    as their ended children's (a tesseract is waited for by the worker, or this process, that
    ran it)."""
    stats = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, fields = f.read().rsplit(")", 1)
        except (OSError, ValueError):  # not a process, or it ended meanwhile
            continue
        fields = fields.split()
        stats[int(entry)] = (name.rsplit("(", 1)[-1], int(fields[1]), [int(x) for x in fields[11:15]])
    ours, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, (_, parent, _) in stats.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    ray = sum(sum(stats[pid][2][:2]) for pid in ours if stats[pid][0] != "tesseract")
    ended = sum(sum(stats[pid][2][2:]) for pid in ours)
    return ray / TICK, ended / TICK


def measured(run, n: int, cpu: dict, name: str) -> float:
    """Pages a second of `run()` (its seconds), noting Ray's and tesseract's CPU a page in `cpu`."""
    ray0, tess0 = cpu_seconds()
    seconds = run()
    ray1, tess1 = cpu_seconds()
    cpu.setdefault(name, []).append(((ray1 - ray0) / n, (tess1 - tess0) / n))
    return n / seconds


def print_cpu(cpu: dict[str, list[tuple[float, float]]]) -> None:
    ray_cpu = [r for r, _ in cpu["ray"]]
    tess = min(t for _, t in cpu["here"])
    print(f"Ray's own CPU, the bare command as Ray tasks: {min(ray_cpu):.3f} core-s a page (runs: "
          f"{' '.join(f'{r:.3f}' for r in ray_cpu)}; its raylets, GCS, agents, workers and this driver; "
          f"{max(r for r, _ in cpu['here']):.3f} at most while the bare command ran here); the bare command's: "
          f"{tess:.3f} ({min(t for _, t in cpu['ray']):.3f} as Ray tasks). The pages' share of the cores: "
          f"{tess / (tess + min(ray_cpu)):.2f}")


def on_ars_own_ray(images: list[Path]) -> None:
    """Ray's own cost on a Ray that ar starts itself (no RAY_ADDRESS): one node with this
    machine's cores, its settings ar's (pipeline/executor.py's connect_ray)."""
    from pipeline.executor import stop_own_ray

    os.environ.pop("RAY_ADDRESS", None)
    os.environ["AR_EXECUTOR"] = "ray"
    print(f"A Ray that ar starts itself, one node of {CORES} CPUs")
    task = page_runner(_bare_page)
    bare_on_ray(task, images[:2])  # started and warmed, untimed
    n, here, ray, cpu = len(images), [], [], {}
    try:
        for _ in range(RUNS):
            here.append(measured(lambda: bare(images, CORES, True), n, cpu, "here"))
            ray.append(measured(lambda: bare_on_ray(task, images), n, cpu, "ray"))
    finally:
        stop_own_ray()
    print(f"On a Ray that ar starts itself: bare as Ray tasks / bare here: {max(ray) / max(here):.2f} "
          f"({max(ray):.2f} vs {max(here):.2f} pages/s; runs: {' '.join(f'{x:.2f}' for x in ray)} vs "
          f"{' '.join(f'{x:.2f}' for x in here)}; goal >= 0.9)")
    print_cpu(cpu)


def main() -> None:
    if not SAMPLE.is_dir() or not list(SAMPLE.glob("page_*.png")):
        subprocess.run([sys.executable, "-m", "tools.make_sample"], cwd=ROOT, check=True)
    environ = dict(os.environ)  # as it was given, for the run on a Ray of ar's own
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster

    # the head set up as the README tells a cluster's operator (its nodes take it from the head)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "_system_config": RAY_SYSTEM_CONFIG})
    for _ in range(CORES):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    print(f"{CORES} cores, {CORES} one-core Ray nodes; load average before: %.2f" % os.getloadavg()[0])
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-ocr-") as d:
            books = Path(d)
            pages = sorted(SAMPLE.glob("page_*.png"))
            images = make_book(books, "bare", pages).source_pages()
            n = len(images)
            os.environ["RAY_ADDRESS"] = cluster.address
            os.environ["AR_EXECUTOR"] = "ray"
            ar_ocr(make_book(books, "warm", pages[:2]))  # connect and warm the workers, untimed
            bare_task = page_runner(_bare_page)
            bare_on_ray(bare_task, images[:2])  # its function sent to the workers, untimed
            rates: dict[str, list[float]] = {}
            cpu: dict[str, list[tuple[float, float]]] = {}
            for i in range(RUNS):
                rates.setdefault("bare tesseract", []).append(
                    measured(lambda: bare(images, CORES, True), n, cpu, "here"))
                os.environ["AR_EXECUTOR"] = "ray"
                rates.setdefault("bare, as Ray tasks", []).append(
                    measured(lambda: bare_on_ray(bare_task, images), n, cpu, "ray"))
                rates.setdefault("ar, OCR as Ray tasks", []).append(n / ar_ocr(make_book(books, f"ray{i}", pages)))
                os.environ["AR_EXECUTOR"] = "local"
                rates.setdefault("ar, OCR here", []).append(n / ar_ocr(make_book(books, f"here{i}", pages)))
            best = {name: max(r) for name, r in rates.items()}
            for name, r in rates.items():
                print(f"  {name:<22} {best[name]:6.2f} pages/s  (runs: {' '.join(f'{x:.2f}' for x in r)}; {n} pages)")
            print(f"Ray's own cost: bare as Ray tasks / bare here: "
                  f"{best['bare, as Ray tasks'] / best['bare tesseract']:.2f} (goal >= 0.9)")
            print_cpu(cpu)
            print(f"ar's OCR as Ray tasks / bare tesseract: {best['ar, OCR as Ray tasks'] / best['bare tesseract']:.2f}; "
                  f"/ ar here: {best['ar, OCR as Ray tasks'] / best['ar, OCR here']:.2f}")
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    # in a process of its own: Ray takes its auth settings when it is imported, as ar's process does
    subprocess.run([sys.executable, "-m", "bench.fleet_ocr", "--own-ray"], cwd=ROOT, env=environ, check=True)
    print("load average after: %.2f" % os.getloadavg()[0])


if __name__ == "__main__":
    if sys.argv[1:] == ["--own-ray"]:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-ocr-") as d:
            on_ars_own_ray(make_book(Path(d), "bare", sorted(SAMPLE.glob("page_*.png"))).source_pages())
    else:
        main()
