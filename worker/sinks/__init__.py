"""Destinations for enriched payloads. A new one is a Sink subclass and a test."""

from worker.sinks.base import Delivery, Outcome, Sink
from worker.sinks.stream import StreamSink
from worker.sinks.webhook import WebhookSink

__all__ = ["Delivery", "Outcome", "Sink", "StreamSink", "WebhookSink"]
