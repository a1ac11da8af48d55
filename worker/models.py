"""The FunnelFox session as its Public API returns it, read leniently, never narrowed.

Validation protects the enrichment; it does not police FunnelFox. A session is refused only
when it cannot be told apart or placed in time: its ``id`` and ``created_at`` are required.
Every other field may be missing, null or of a form FunnelFox's published API reference
(Get Session) does not name: the model holds None for it (a reply that cannot be read is None
in its place), the enrichment leaves what it would derive from it null, and ``data.session``
still carries the body as sent. Fields we do not know yet are kept (``extra="allow"``). The
README's Validation section lists what is refused and what is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    JsonValue,
    SkipValidation,
    StrictInt,
    StrictStr,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

T = TypeVar("T")

# A reply is what the user entered: text, a number, a YYYY-MM-DD date, the list of choices
# of a multi-select question, and whatever widgets and future element types send (booleans,
# objects). It is carried exactly as sent: 3 and "3" stay apart, true stays true. Not checked
# again: it comes from a JSON parser, and checking cost a quarter of the session's validation.
ReplyValue = Annotated[JsonValue, SkipValidation]


def _unreadable(_: Any) -> None:
    return None


class _OrNone:
    """Validation: the value when it has the field's type, else None (never an error).

    JSON Schema: the field's usual form, or any other value.
    """

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # A union tried in order, in Rust: the Python fallback runs only for odd values.
        return core_schema.union_schema(
            [handler(source), core_schema.no_info_plain_validator_function(_unreadable)],
            mode="left_to_right",
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        assert schema["type"] == "union"  # built just above
        usual = handler(schema["choices"][0])
        forms = usual["anyOf"] if list(usual) == ["anyOf"] else [usual]
        other = {"description": "any other value: delivered as sent, ignored by the enrichment"}
        return {"anyOf": [*forms, other]}


Lenient = Annotated[T | None, _OrNone()]
"""A field read when it has its documented type, else None; it never fails validation."""


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
    """One answer: the element of a screen and its value (any JSON value, null included)."""

    screen_id: StrictStr
    element_id: StrictStr
    value: ReplyValue = Field(description="any JSON value, as the user's element sent it")


class Attributes(_Kept):
    """What FunnelFox knows about where and how the session ran; any field may be absent."""

    city: Lenient[str] = None
    # FunnelFox's API reference types it as a string (ISO 3166-1 alpha-2) but its example
    # shows a list; sessions carry a string. Both are read so the example's form never costs
    # a session its country.
    country: Lenient[str | list[str]] = None
    ip: Lenient[str] = None
    postal_code: Lenient[str] = None
    region_code: Lenient[str] = None
    locale_code: Lenient[str] = None
    timezone: Lenient[str] = None


class Session(_Kept):
    """A funnel session (``GET /sessions/{id}``): ``id`` and ``created_at`` are all it needs."""

    id: StrictStr = Field(min_length=1)
    # Capped at 9999-12-31: a millisecond timestamp sent by mistake is invalid, not year 56369.
    created_at: StrictInt = Field(ge=0, le=253402300799, description="Unix seconds")
    funnel_id: Lenient[StrictStr] = None
    profile_id: Lenient[StrictStr] = None
    origin: Lenient[StrictStr] = None
    user_agent: Lenient[StrictStr] = None
    attributes: Lenient[Attributes] = None
    # Undocumented by FunnelFox; sessions carry the landing URL's parameters (utm_*, fbclid,
    # gclid …) as string to string. Values are read loosely by the enrichment.
    query_params: Lenient[dict[str, Any]] = None
    # An unreadable reply (not an object, no string screen_id or element_id, no value) is
    # None in its place, so indexes still match data.session's replies.
    replies: Lenient[list[Lenient[Reply]]] = None
    query: Lenient[str] = None
    experiment_id: Lenient[str] = None
    locale: Lenient[str] = None
