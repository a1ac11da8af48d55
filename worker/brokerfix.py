"""A guard for kombu's Redis transport when the broker vanishes mid-restore.

When Redis goes away while a worker holds unacknowledged messages, kombu (5.7) closes the
broker connection, drops the transport's client, and then tries to restore those messages
through it: ``_connparams`` reads ``None.hostname`` and the AttributeError escapes Celery's
``ignore_errors``, so the worker dies ("Unrecoverable error"). Raising the connection error
kombu expects instead lets the worker reconnect; the messages it could not restore stay in
Redis's unacked set and come back after the visibility timeout, as after any lost connection.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis

_original_connparams = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("broker connection already closed")
    return _original_connparams(self, asynchronous)  # type: ignore[no-untyped-call]


def install() -> None:
    """Patch the Redis channel once; idempotent."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
