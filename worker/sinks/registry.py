"""The one registry of sink kinds.

A new kind of destination is a Sink subclass with ``from_destination``, its settings model in
``config.destinations`` (a member of its ``Destination`` union, which says what the kind's
settings are, which of them are secret and its delivery timeout), and one line in
``SINK_KINDS``. Everything else reads kinds off those two: the settings, the scrubber, the
file's error messages, queues and metrics go by destination name.
"""

from __future__ import annotations

from config.destinations import Destination
from worker.sinks.base import Resources, Sink
from worker.sinks.stream import StreamSink
from worker.sinks.webhook import WebhookSink

SINK_KINDS: dict[str, type[Sink]] = {
    "webhook": WebhookSink,
    "redis_stream": StreamSink,
}


def build_sink(destination: Destination, resources: Resources) -> Sink:
    """The sink that delivers to ``destination``."""
    return SINK_KINDS[destination.type].from_destination(destination, resources)
