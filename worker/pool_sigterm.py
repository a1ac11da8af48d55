"""Pool processes obey SIGTERM from their own main process only.

Supervisors (honcho, foreman, Heroku; ``kill -TERM -<pgid>``) signal every process of the
``worker:`` line. Left as Celery leaves it, SIGTERM kills a pool process on the spot: the task
in progress is cut off (``WorkerLostError`` at ERROR, the message run again) although the main
process, which got the same signal, is in its warm shutdown and would have waited for it.

Stopping the pool is the main process's job: it closes the pool once the work in progress is
done (warm shutdown), and it sends SIGTERM itself when a task must end now (the hard time
limit, a cold shutdown, ``revoke --terminate``). So in a pool process SIGTERM is blocked and
read by one thread with ``sigwaitinfo``, which tells who sent it: from the main process it
terminates the process exactly as before; from anyone else it is logged and left to the main
process. SIGKILL is untouched, and a pool process dies with its main process (Celery sets the
parent-death signal to SIGKILL), so nothing here can outlive a stopped worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("worker.pool_sigterm")


def install() -> bool:
    """Take SIGTERM over in a freshly forked pool process (before it starts any thread).

    False where the platform cannot say who sent a signal (no ``sigwaitinfo``, e.g. macOS):
    SIGTERM is then left as it was.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Blocked in this thread, and so in every thread started from it from now on.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    watcher = threading.Thread(
        target=_watch, args=(os.getppid(),), name="sigterm-watch", daemon=True
    )
    watcher.start()
    return True


def _watch(parent_pid: int) -> None:
    while True:
        sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
        if sender == parent_pid or os.getppid() != parent_pid:
            _terminate()
            return
        log.info(
            "SIGTERM from pid %d left to the worker's main process, which finishes the "
            "work in progress",
            sender,
        )


def _terminate() -> None:
    """Die of SIGTERM, as an unblocked SIGTERM would have made this process do."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.raise_signal(signal.SIGTERM)  # to this thread, the one that now accepts it
