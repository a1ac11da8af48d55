"""Which destinations a unit of work goes to: the one place that decides.

A unit's payload type is ``session.enriched`` for a session and the FunnelFox event type for a
conversion (``subscription.active`` …). Every destination takes every type here; a
destination's own filters (``event_types``, ``funnel_ids``, ``sandbox``: config.destinations
``Filters``) are applied per unit by the fetch stage (``Pipeline._takes``), once the unit's
funnel is known.
"""

from __future__ import annotations

from collections.abc import Iterable


def destinations_for(payload_type: str, destinations: Iterable[str]) -> list[str]:
    """The destinations (by name, in delivery order) that take payloads of this type."""
    return list(destinations)
