"""The Ray that ar starts for a run (no RAY_ADDRESS) dies with the run's process, however it
dies: SIGKILL and the OOM killer leave no moment to call ray.shutdown(), and Ray's own
fate-sharing takes its GCS and raylet, but its agents were seen running 30 s later (Ray 2.60:
they report the raylet's death to the dead GCS first), and what a task started runs on.

So a reaper, a small process of its own (its own session: a Ctrl-C or a closed terminal does
not reach it), waits on a pipe whose write end only the run's process holds. The pipe ends
when that process closes it (stop_own_ray) or when it dies, whatever kills it; then the reaper
kills every process of that Ray and removes the Ray's folder. A process is of that Ray when
  - it holds a file open in the Ray's folder (its temp dir, made for the run): every process
    Ray starts writes its logs there; or
  - its environment holds the run's marker (RAY_AUTH_TOKEN=<the run's token>), inherited by
    every process Ray starts and those they start (a tesseract an OCR task runs). Not enough
    alone: Ray's agents set their process title, which blanks the environment /proc shows.
It reads /proc: on a system without it, it only removes the folder. Run as a script it
imports nothing of ar (and only the standard library).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REAP_S = 30.0  # at most this long killing; a process that holds on longer is left (in D state, say)


class Reaper:
    """In the run's process: the reaper of a Ray to start in `self.folder` (made here) whose
    processes will have `marker` (NAME=value) in their environment. Made before that is in
    the environment it passes on."""

    def __init__(self, marker: str):
        self.folder = tempfile.mkdtemp(prefix="ar-ray-", dir=ray_temp_base())
        read, self._write = os.pipe()  # not inheritable: no process of the run's gets the write end
        self._process = subprocess.Popen([sys.executable, "-I", __file__], stdin=read, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(read)
        os.write(self._write, f"{self.folder}\n{marker}\n".encode())

    def close(self) -> None:
        """Reap now (what ray.shutdown() left, if anything) and wait for the reaper to end."""
        os.close(self._write)
        try:
            self._process.wait(REAP_S + 5)
        except subprocess.TimeoutExpired:  # it is still killing; it ends by itself
            pass


def ray_temp_base() -> str | None:
    """Where Ray itself would put its folder (ray/): RAY_TMPDIR, else TMPDIR on Linux, else
    /tmp (a short path: Ray's sockets go in it)."""
    linux_tmp = os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None
    return os.environ.get("RAY_TMPDIR") or linux_tmp or ("/tmp" if os.name == "posix" else None)


def of_the_ray(pid: str, folder: str, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if b"\0" + entry + b"\0" in b"\0" + f.read():
                return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder + os.sep):
                return True
    except OSError:  # it ended meanwhile, or is not ours
        pass
    return False


def holders(folder: str, entry: bytes, spared: set[int]) -> list[int]:
    """The pids of the processes of the Ray in `folder`, its processes marked with `entry`."""
    names = os.listdir("/proc") if os.path.isdir("/proc") else []
    return [int(pid) for pid in names if pid.isdigit() and int(pid) not in spared and of_the_ray(pid, folder, entry)]


def reap(folder: str, entry: bytes, driver: int) -> None:
    """Kill the Ray's processes, never `driver` (the run's process: alive after a normal end,
    when it may hold a log of Ray's open) nor this one."""
    end = time.monotonic() + REAP_S
    while (pids := holders(folder, entry, {driver, os.getpid()})) and time.monotonic() < end:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)  # a process killed is gone from /proc once its parent (or init) reaps it
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    driver = os.getppid()
    folder = sys.stdin.buffer.readline().rstrip(b"\n").decode()
    entry = sys.stdin.buffer.readline().rstrip(b"\n")
    while sys.stdin.buffer.read(4096):  # nothing more is written: it returns at the pipe's end
        pass
    if folder and entry:
        reap(folder, entry, driver)


if __name__ == "__main__":
    main()
