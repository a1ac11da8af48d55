"""The FunnelFox event that started a session's run: it travels with the task to ``data.trigger``.

Its own small module so the web process, which builds it, never loads the enrichment.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Trigger(BaseModel):
    """The FunnelFox event that started this session's run, when one did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str | None = None
    type: str | None = None
    created_at: int | None = None
    is_sandbox: bool | None = None
    project_id: str | None = None
    funnel_id: str | None = None
    profile_id: str | None = None
