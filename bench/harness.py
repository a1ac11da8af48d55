"""Child processes for the benchmark, and what is measured of them: CPU, peak RSS, log lines."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

try:
    import psutil
except ImportError:  # pragma: no cover - said once, clearly, instead of a traceback
    raise SystemExit(
        "the benchmark needs psutil: .venv/bin/pip install psutil (or install the dev extra)"
    ) from None

ROOT = Path(__file__).resolve().parent.parent

_children: list[Child] = []


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    """PATH and HOME plus ``extra``: nothing from this shell may tune the processes measured."""
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    env.update(extra)
    return env


def enqueue(ids: Iterable[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m worker enqueue -`` with ``ids`` on its stdin, as an operator queues them."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "enqueue", "-"],
        input="\n".join(ids) + "\n",
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


class Child:
    """A child process in its own process group, its output written straight to a log file."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        # A file, not a pipe: no reader thread in the harness competes with what it measures.
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdin=stdin,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        _children.append(self)

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float) -> str | None:
        """The first output line containing ``text``; None if it exits or time runs out first."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.output().splitlines():
                if text in line:
                    return line
            if not self.alive() or time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to the main process (a warm shutdown for Celery), then SIGKILL the group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout_s)
        # Whatever is left of the group (a pool child that outlived its parent) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._log.close()
        if self in _children:
            _children.remove(self)
        return self.popen.returncode


def stop_all() -> None:
    """Stop every child still running, newest first."""
    for child in reversed(list(_children)):
        child.stop(timeout_s=10)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of some processes (not their children) so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


class TreeMonitor:
    """A process tree's summed RSS, sampled every ``interval_s`` in a thread; its CPU on demand.

    PSS (shared pages split between the processes sharing them) is read every
    ``pss_every``-th sample only: walking the page tables costs more than reading RSS.
    """

    def __init__(self, pid: int, interval_s: float = 0.05, pss_every: int = 5) -> None:
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._pss_every = pss_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self.peak_rss_bytes = 0
        self.peak_rss_split: list[int] = []
        self.peak_pss_bytes = 0
        self.peak_processes = 0

    def start(self) -> TreeMonitor:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            tree = _tree(self._root)
            split = []
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    split.append(process.memory_info().rss)
            # Summed RSS counts pages a prefork parent shares with its children more than once:
            # an upper bound, the figure the memory target (bench/report.py) is stated in.
            if sum(split) > self.peak_rss_bytes:
                self.peak_rss_bytes, self.peak_rss_split = sum(split), split
            self.peak_processes = max(self.peak_processes, len(split))
            if tick % self._pss_every == 0:
                pss = 0
                for process in tree:
                    with contextlib.suppress(psutil.Error, AttributeError):
                        pss += process.memory_full_info().pss
                self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            tick += 1
            self._stop.wait(self._interval_s)

    def cpu_by_process(self) -> dict[int, float]:
        """User + system CPU seconds so far per process of the tree (root first).

        Each figure includes the process's reaped children, so a pool process that was
        replaced still counts.
        """
        seconds = {}
        for process in _tree(self._root):
            with contextlib.suppress(psutil.Error):
                t = process.cpu_times()
                seconds[process.pid] = t.user + t.system + t.children_user + t.children_system
        return seconds

    def cpu_s(self) -> float:
        """User + system CPU seconds of the whole tree so far."""
        return sum(self.cpu_by_process().values())
