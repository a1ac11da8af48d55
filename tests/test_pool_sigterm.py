"""A pool process obeys SIGTERM from its parent only (worker/pool_sigterm.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from multiprocessing.synchronize import Event

import pytest

from tests.processes import wait_until
from worker import pool_sigterm

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "sigwaitinfo"), reason="no sigwaitinfo on this platform"
)


def _pool_process(ready: Event) -> None:
    assert pool_sigterm.install()
    ready.set()
    while True:  # as a pool process waiting for its next task
        time.sleep(0.05)


def test_sigterm_from_anyone_else_is_ignored_and_from_the_parent_obeyed() -> None:
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_pool_process, args=(ready,))
    child.start()
    try:
        assert ready.wait(10)
        # kill(1) is another process: a supervisor signalling every process of the line.
        subprocess.run(["kill", "-TERM", str(child.pid)], check=True)
        assert not wait_until(lambda: not child.is_alive(), 1.0)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGTERM)  # from the parent: a time limit, a cold shutdown
        child.join(10)
        assert child.exitcode == -signal.SIGTERM
    finally:
        if child.is_alive():
            child.kill()
            child.join()
