"""Enrichment: what a validated session says about its visit, as plain data.

Pure functions: no I/O, no settings, no clock. Times are the session's own ``created_at``.
Every text that is empty or absent becomes None; a part whose session field is missing, null
or unreadable (``answers``, ``utm``, ``click_ids``, ``device``, ``geo``) is None as a whole.
"""

from __future__ import annotations

import re
import time
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import pycountry
from pydantic import BaseModel, ConfigDict, Field

from worker.enrich_device import Device, parse_device
from worker.models import Reply, ReplyValue, Session

__all__ = [
    "CLICK_ID_PARAMS",
    "Device",
    "Enrichment",
    "Geo",
    "Locale",
    "Utm",
    "answers_of",
    "click_ids_of",
    "country_name",
    "enrich",
    "geo_of",
    "locale_of",
    "parse_device",
    "parse_locale",
    "rfc3339_utc",
    "text_of",
    "utc_offset_at",
    "utm_of",
    "zone",
]

# Ad-platform click ids, matched by exact key: Snapchat sends both "sccid" and "ScCid".
CLICK_ID_PARAMS: tuple[str, ...] = (
    "fbclid",  # Meta
    "gclid",  # Google Ads
    "gbraid",  # Google Ads, iOS app-to-web
    "wbraid",  # Google Ads, iOS web-to-app
    "dclid",  # Google Display & Video 360
    "ttclid",  # TikTok
    "msclkid",  # Microsoft Ads
    "twclid",  # X (Twitter)
    "li_fat_id",  # LinkedIn
    "epik",  # Pinterest
    "rdt_cid",  # Reddit
    "sccid",  # Snapchat
    "ScCid",  # Snapchat
    "yclid",  # Yandex
    "irclickid",  # impact.com
)
_CLICK_IDS = frozenset(CLICK_ID_PARAMS)

# language[-Script][-REGION], "_" or "-"; a POSIX tail (".UTF-8", "@euro") is ignored.
# Display strings such as "🇪🇸 Spanish" do not match.
_LOCALE = re.compile(
    r"([A-Za-z]{2,3})(?:[-_][A-Za-z]{4})?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?(?:[.@]\S*)?"
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Utm(_Frozen):
    """The utm_* parameters of the landing URL."""

    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None


class Geo(_Frozen):
    """Where the session ran, as FunnelFox located it."""

    country_code: str | None = Field(
        default=None, description="ISO 3166-1 alpha-2 when valid, else as received"
    )
    country_name: str | None = None
    region_code: str | None = None
    city: str | None = None
    postal_code: str | None = None
    timezone: str | None = Field(default=None, description="IANA name, as received")
    utc_offset: str | None = Field(
        default=None, description="±HH:MM of the time zone at created_at"
    )


class Locale(_Frozen):
    """The visitor's language and region, e.g. "pt" and "BR"."""

    language: str | None = None
    region: str | None = None


class Enrichment(_Frozen):
    """Everything derived from one session."""

    created_at: str = Field(description="RFC 3339 UTC, e.g. 2024-05-25T21:27:42Z")
    answers: dict[str, dict[str, ReplyValue]] | None = Field(
        description="{screen_id: {element_id: value}}, each value as sent; a repeated element"
        " keeps its last value; null when the session has no list of replies"
    )
    utm: Utm | None = Field(description="null when the session has no query_params object")
    click_ids: dict[str, str] | None = Field(
        description="null when the session has no query_params object"
    )
    device: Device | None = Field(description="null when the session has no user_agent string")
    geo: Geo | None = Field(description="null when the session has no attributes object")
    locale: Locale


def text_of(value: Any) -> str | None:
    """Return a query or attribute value as stripped text; empty or not text gives None."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def rfc3339_utc(unix: int) -> str:
    """Format Unix seconds as RFC 3339 UTC with a "Z": 2024-05-25T21:27:42Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def answers_of(replies: Iterable[Reply | None]) -> dict[str, dict[str, ReplyValue]]:
    """Group replies by screen then element, in order; a repeated element keeps its last value.

    Unreadable replies (None) are left out.
    """
    answers: dict[str, dict[str, ReplyValue]] = {}
    for reply in replies:
        if reply is not None:
            answers.setdefault(reply.screen_id, {})[reply.element_id] = reply.value
    return answers


def utm_of(query_params: Mapping[str, Any]) -> Utm:
    """Read utm_source … utm_content from the landing query."""
    return Utm(
        source=text_of(query_params.get("utm_source")),
        medium=text_of(query_params.get("utm_medium")),
        campaign=text_of(query_params.get("utm_campaign")),
        term=text_of(query_params.get("utm_term")),
        content=text_of(query_params.get("utm_content")),
    )


def click_ids_of(query_params: Mapping[str, Any]) -> dict[str, str]:
    """Keep the non-empty click ids among CLICK_ID_PARAMS, in the query's order."""
    return {
        key: text
        for key, value in query_params.items()
        if key in _CLICK_IDS and (text := text_of(value)) is not None
    }


@lru_cache(maxsize=1024)
def _country(code: str) -> tuple[str, str | None]:
    if len(code) == 2 and code.isascii() and code.isalpha():
        country = pycountry.countries.get(alpha_2=code)
        if country is not None:
            name = getattr(country, "common_name", None) or country.name
            return code.upper(), str(name)
    return code, None


def country_name(code: str) -> str | None:
    """Common name of an ISO 3166-1 alpha-2 code ("GB" → "United Kingdom"), else None."""
    return _country(code.strip())[1]


@lru_cache(maxsize=1024)
def zone(key: str) -> zoneinfo.ZoneInfo | None:
    """The IANA time zone named ``key``, or None when there is none by that name."""
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: not a normalized relative key ("../x", "") or not a TZif file.
        return None


def utc_offset_at(tz: str, unix: int) -> str | None:
    """Offset of zone ``tz`` from UTC at Unix second ``unix``, as ±HH:MM; None if unknown."""
    tzinfo = zone(tz.strip())
    if tzinfo is None:
        return None
    try:
        offset = datetime.fromtimestamp(unix, tz=tzinfo).utcoffset()
    except (OverflowError, ValueError, OSError):
        return None
    if offset is None:
        return None
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    # Seconds are dropped: a few zones had them until 1972 (Africa/Monrovia, -00:44:30).
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def geo_of(session: Session) -> Geo | None:
    """Read the session's location attributes (None without them); the offset is at created_at."""
    attributes = session.attributes
    if attributes is None:
        return None
    code = text_of(attributes.country)
    country_code, name = _country(code) if code else (None, None)
    timezone = text_of(attributes.timezone)
    return Geo(
        country_code=country_code,
        country_name=name,
        region_code=text_of(attributes.region_code),
        city=text_of(attributes.city),
        postal_code=text_of(attributes.postal_code),
        timezone=timezone,
        utc_offset=utc_offset_at(timezone, session.created_at) if timezone else None,
    )


def parse_locale(value: str | None) -> Locale | None:
    """Parse "en_US", "pt-BR", "es", "zh-Hant-TW" into a Locale; None if not a locale code."""
    match = _LOCALE.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    region = match[2]
    return Locale(language=match[1].lower(), region=region.upper() if region else None)


def locale_of(session: Session) -> Locale:
    """The attributes' locale_code, else the session's locale when it is a code."""
    attributes = session.attributes
    for value in (attributes.locale_code if attributes else None, session.locale):
        if (locale := parse_locale(value)) is not None:
            return locale
    return Locale()


def enrich(session: Session) -> Enrichment:
    """Derive the Enrichment of one validated session."""
    replies, params, ua = session.replies, session.query_params, session.user_agent
    return Enrichment(
        created_at=rfc3339_utc(session.created_at),
        answers=None if replies is None else answers_of(replies),
        utm=None if params is None else utm_of(params),
        click_ids=None if params is None else click_ids_of(params),
        device=None if ua is None else parse_device(ua),
        geo=geo_of(session),
        locale=locale_of(session),
    )
