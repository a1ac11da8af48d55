"""Which destinations a unit of work goes to: the one place that decides.

A unit's payload type is ``session.enriched`` for a session and the FunnelFox event type for a
conversion (``subscription.active`` …). Every destination takes every type today; a
destination's filter (its ``event_types``) belongs here and nowhere else, so the fetch stage,
the ledger's view of a unit and its delivery records all follow the same decision.
"""

from __future__ import annotations

from collections.abc import Iterable


def destinations_for(payload_type: str, destinations: Iterable[str]) -> list[str]:
    """The destinations (by name, in delivery order) that take payloads of this type."""
    return list(destinations)
