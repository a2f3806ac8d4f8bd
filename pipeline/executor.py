"""Where the OCR of a page runs: in this process's event loop (tesseract processes on this
machine's cores, the default), or with AR_EXECUTOR=ray as Ray tasks, one core each, on every
node of a Ray cluster (RAY_ADDRESS; without it a local Ray that ar starts itself).

Book files sit on storage that every node sees at the same path: a task gets the page image's
path and returns the page's OCR as a dict; the driver writes it and marks it done in the
ledger, as for a local page. A task may run twice (Ray retries, a node's zombie worker): the
ledger's claims and epochs (infra/pg_ledger.py) decide which result counts, never Ray.
Ray is imported only with AR_EXECUTOR=ray: it is the `fleet` extra.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from infra.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
PageWork = Callable[..., Awaitable[dict]]


def executor_name() -> str:
    name = os.environ.get("AR_EXECUTOR") or "local"
    if name not in ("local", "ray"):
        raise UsageError(f"AR_EXECUTOR={name!r}: use 'local' (the default) or 'ray'")
    return name


def page_runner(local: PageWork, workers: int) -> tuple[PageWork, int]:
    """(how a page's CPU-bound work `local` is run, how many pages at a time): as it is, one
    page per core of this machine; or as a Ray task of one core, one page per core of the
    cluster. `local` must be a module's function (a task names it, and a node imports it)."""
    if executor_name() == "local":
        return local, max(1, min(workers, os.cpu_count() or 1))
    ray = connect_ray()
    cores = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1, max_retries=3)(_run_task)

    async def run(*args):
        return await task.remote(local, *args)

    return run, max(1, min(workers, cores))


def _run_task(work: PageWork, *args):
    """A Ray task: one page's work, on the node that runs it."""
    return asyncio.run(work(*args))


def connect_ray():
    """Ray, connected once per process: to RAY_ADDRESS's cluster, else a local Ray started
    here on loopback (127.0.0.1 kept as it is, no token: it listens on this machine only).
    The workers import this checkout of ar (PYTHONPATH); nothing secret goes in the
    runtime_env, which Ray stores and shows."""
    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    return ray
