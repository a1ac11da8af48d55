"""The one producer: every task this product sends goes through here, by name.

The console (enqueue, dlq replay, backfill) and the web process do not import the worker's
Celery app or its settings: they connect a small producer-only app to the broker. The worker
hands its own app to the same class for the retries and deliveries it queues, so a message
has one shape whoever sends it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from celery import Celery
from kombu.entity import Exchange, Queue

from worker.keys import FETCH_QUEUE, QUEUED_AT_HEADER, delivery_queue
from worker.ledger import Acceptance, LedgerWriter
from worker.redis_clients import kombu_broker, sync_client
from worker.work import Work

QUEUE = FETCH_QUEUE
SESSION_TASK_NAME = "worker.tasks.enrich_session"  # the contract for producers elsewhere
BATCH_TASK_NAME = "worker.tasks.enrich_batch"
DELIVER_TASK_NAME = "worker.tasks.deliver"
TASK_NAMES = (SESSION_TASK_NAME, BATCH_TASK_NAME, DELIVER_TASK_NAME)
POOL_SIZE = 16
# Flower's search looks in a task's argument repr: every id is listed, up to this many
# characters (a batch of 1,000 ids of 128 characters stays searchable in full).
ARGSREPR_MAX_CHARS = 140_000


def own_queue(name: str) -> Queue:
    """A queue on a direct exchange of its own name, bound by its own name.

    A bare ``Queue(name)`` in ``task_queues`` takes the default queue's exchange and routing
    key ("enrich"), so the worker declared all three queues bound to one key. Celery publishes
    by queue name, so nothing was misrouted, but anything that routes by exchange (a producer
    elsewhere, a restore) would have copied a message into every queue.
    """
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def describe(batch: Sequence[Work]) -> str:
    """The argument repr Flower shows and searches: every id, never a payload."""
    text = "[" + ", ".join(w.session_id for w in batch) + "]"
    if len(text) <= ARGSREPR_MAX_CHARS:
        return text
    return text[: ARGSREPR_MAX_CHARS - 20].rsplit(", ", 1)[0] + f", … {len(batch)} ids]"


class Publisher(Protocol):
    """Where the ingress sends tasks; a stub in tests that need a broken broker and Redis up."""

    def publish_many(self, works: Sequence[Work]) -> None:
        """Return once one message holding every unit is in the broker; raise if it is not."""

    def close(self) -> None:
        """Release connections."""


def producer_config(redis_url: str, timeout_s: float) -> dict[str, Any]:
    """Celery settings for a producer that fails fast when the broker is away."""
    broker_url, sentinel = kombu_broker(redis_url, connect_timeout_s=timeout_s)
    return {
        "broker_url": broker_url,
        "broker_transport_options": {
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            "retry_on_timeout": False,
            # kombu otherwise retries a refused connection for ~6 s before raising.
            "max_retries": 0,
            **sentinel,
        },
        "broker_connection_retry": False,
        "broker_pool_limit": POOL_SIZE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_queues": [own_queue(QUEUE)],
        "task_send_sent_event": True,
    }


# One immediate second try: a pooled connection may have gone stale while Redis restarted.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


class Producer:
    """Sends ``enrich_batch`` and ``deliver`` messages by name.

    An entry point's producer (``connect``) records each session it accepts in the ledger
    before publishing it: a crash between the two leaves a session the ledger knows and the
    reconciler publishes, never one nobody knows.
    """

    def __init__(self, app: Celery, ledger: LedgerWriter | None = None) -> None:
        self.app = app
        self.ledger = ledger
        self._producer: Any = None

    @classmethod
    def connect(cls, redis_url: str, *, timeout_s: float = 10.0) -> Producer:
        """A producer of its own, for a process that is not a worker (``REDIS_URL``'s broker)."""
        app = Celery("funnelfox-enricher-producer", set_as_current=False)
        app.conf.update(producer_config(redis_url, timeout_s))
        client = sync_client(redis_url, timeout_s=timeout_s, connect_timeout_s=timeout_s)
        return cls(app, LedgerWriter(client))

    @contextmanager
    def session(self) -> Iterator[Producer]:
        """Send everything inside the block over one broker connection."""
        with self.app.producer_or_acquire() as producer:
            self._producer = producer
            try:
                yield self
            finally:
                self._producer = None

    def publish_many(self, works: Sequence[Work]) -> None:
        """One ``enrich_batch`` of units the ingress accepted, recorded in the ledger first;
        raises if it did not reach the broker. A unit listed twice is sent once, as first
        listed: twice in one message, both copies would be fetched before either is delivered.
        """
        first: dict[str, Work] = {}
        for work in works:
            first.setdefault(work.session_id, work)
        unique = list(first.values())
        self._accept([Acceptance.of(w) for w in unique], "ingress")
        self._send(
            BATCH_TASK_NAME,
            ([w.to_message() for w in unique],),
            queue=QUEUE,
            argsrepr=describe(unique),
            retry=True,
            retry_policy=_RETRY_POLICY,
        )

    def send_fetches(
        self,
        works: Sequence[Work],
        countdown: float | None = None,
        *,
        accept: str | None = None,
    ) -> None:
        """One fetch message for these sessions; ``accept`` names the entry point accepting them."""
        if accept is not None:
            self._accept([Acceptance.of(w) for w in works], accept)
        self._send(
            BATCH_TASK_NAME,
            ([w.to_message() for w in works],),
            queue=QUEUE,
            countdown=countdown,
            argsrepr=describe(works),
        )

    def send_deliveries(
        self,
        sink: str,
        works: Sequence[Work],
        countdown: float | None = None,
        *,
        accept: str | None = None,
    ) -> None:
        """One delivery message for these payloads, on the sink's own queue."""
        if accept is not None:
            self._accept([Acceptance.of(w, sink) for w in works], accept)
        self._send(
            DELIVER_TASK_NAME,
            (sink, [w.to_message() for w in works]),
            queue=delivery_queue(sink),
            countdown=countdown,
            argsrepr=f"({sink!r}, {describe(works)})",
        )

    def _send(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if self._producer is not None:
            options["producer"] = self._producer
        headers = {QUEUED_AT_HEADER: time.time()}
        self.app.send_task(name, args=args, kwargs=kwargs, headers=headers, **options)

    def _accept(self, items: list[Acceptance], source: str) -> None:
        if self.ledger is not None:
            self.ledger.accept(items, source)

    def close(self) -> None:
        """Close the pooled broker connections (and the ledger's)."""
        self.app.close()
        if self.ledger is not None:
            self.ledger.close()
