"""The FunnelFox session as its Public API returns it, validated but never narrowed.

Follows ``get-session.openapi.yaml`` plus what FunnelFox's docs say beyond it: multi-select
replies hold lists, anonymized sessions have empty fields, and fields we do not know yet are
kept (``extra="allow"``) so the delivered ``data.session`` is the whole session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

# A reply is what the user entered: text, a number, a YYYY-MM-DD date, or the list of
# choices of a multi-select question. StrictInt keeps "3" and 3 apart; bool is refused
# by StrictInt, which is right: FunnelFox never sends booleans as replies.
ReplyValue = StrictStr | StrictInt | float | list[StrictStr | StrictInt] | None


@dataclass(frozen=True, slots=True)
class SessionBody:
    """A Get Session body as FunnelFox sent it: the bytes, and the JSON object they hold."""

    # Delivered as they are: parsing and serializing again would turn an integer beyond
    # 64 bits into a float and rewrite numbers ("1E2" as 100.0).
    raw: bytes
    document: dict[str, Any]


class _Kept(BaseModel):
    """Base for FunnelFox objects: unknown fields are kept, not dropped."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Reply(_Kept):
    """One answer: the element of a screen and its value."""

    screen_id: StrictStr
    element_id: StrictStr
    value: ReplyValue


class Attributes(_Kept):
    """What FunnelFox knows about where and how the session ran; any field may be absent."""

    city: str | None = None
    # The spec types it as a string but its example shows a list; FACTS.md: a string in
    # practice. Both are accepted so the example's form never costs a session.
    country: str | list[str] | None = None
    ip: str | None = None
    postal_code: str | None = None
    region_code: str | None = None
    locale_code: str | None = None
    timezone: str | None = None


class Session(_Kept):
    """A funnel session (``GET /sessions/{id}``)."""

    id: StrictStr = Field(min_length=1)
    funnel_id: StrictStr
    profile_id: StrictStr
    # Capped at 9999-12-31: a millisecond timestamp sent by mistake is invalid, not year 56369.
    created_at: StrictInt = Field(ge=0, le=253402300799, description="Unix seconds")
    origin: StrictStr
    user_agent: StrictStr
    attributes: Attributes
    # FACTS.md: string to string in practice; kept loose so an odd value never costs a session.
    query_params: dict[str, Any]
    replies: list[Reply]
    query: str | None = None
    experiment_id: str | None = None
    locale: str | None = None
