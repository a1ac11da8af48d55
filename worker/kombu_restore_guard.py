"""A guard for kombu's Redis transport when the broker vanishes while messages are restored.

When Redis goes away while a worker holds unacknowledged messages, kombu closes the broker
connection, drops the transport's client, and then tries to restore those messages through
it: ``Channel._connparams`` reads ``None.hostname`` and the AttributeError escapes Celery's
``ignore_errors``, so the worker dies ("Unrecoverable error"); the same AttributeError is
reported upstream as https://github.com/celery/kombu/issues/582. Raising the connection error
kombu expects instead lets the worker reconnect; the messages it could not restore stay in
Redis's unacked hash and come back after the visibility timeout, as after any lost connection.

The patch is applied only to the kombu versions it was verified against (seen crashing in
``tests/test_chaos.py`` with kombu 5.7.0, and guarded there since); any other version is left
as it is, with a warning, since its ``_connparams`` may differ.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu
import redis.exceptions
from kombu.transport import redis as kombu_redis
from packaging.version import Version

log = logging.getLogger("worker.kombu_restore_guard")

VERIFIED = (Version("5.4"), Version("5.8"))  # [from, to): the range read and tested

_original_connparams = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("broker connection already closed")
    return _original_connparams(self, asynchronous)  # type: ignore[no-untyped-call]


def applies_to(version: str) -> bool:
    """Whether this guard was verified against kombu ``version``."""
    low, high = VERIFIED
    return low <= Version(version) < high


def install(version: str = kombu.__version__) -> bool:
    """Patch the Redis channel once (idempotent); False, with a warning, on another kombu."""
    if not applies_to(version):
        log.warning(
            "kombu %s is outside the versions the restore guard was verified against "
            "(%s to below %s): not applied; see worker/kombu_restore_guard.py",
            version,
            *VERIFIED,
        )
        return False
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    return True
