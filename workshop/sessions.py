"""Deterministic, realistic FunnelFox sessions shaped like the Get Session 200 body."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from workshop.faults import SHAPES, parse_faults

# A fixed "now" (2026-01-01T00:00:00Z) keeps every run byte-for-byte identical.
EPOCH = 1_767_225_600
_WINDOW_S = 30 * 24 * 3600
# Funnel sessions are spaced this far apart so index order is newest-first order.
_FUNNEL_STEP_S = 20

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Maps any byte to a Crockford character with bytes.translate; 32 divides 256, so uniformly.
_TO_CROCKFORD = _CROCKFORD.encode() * 8


def short_id(seed: str) -> str:
    """A 26-character ULID-looking id derived from ``seed``."""
    return hashlib.sha256(seed.encode()).digest()[:26].translate(_TO_CROCKFORD).decode()


def funnel_session_id(funnel_id: str, index: int) -> str:
    """The id of the ``index``-th newest session of a simulated funnel."""
    return "ses_" + short_id(f"{funnel_id}:{index}")


def funnel_created_at(funnel_id: str, index: int) -> int:
    """Creation time of a funnel's ``index``-th session: index order is newest-first order."""
    jitter = hashlib.sha256(f"{funnel_id}:{index}:t".encode()).digest()[0] % _FUNNEL_STEP_S
    return EPOCH - index * _FUNNEL_STEP_S - jitter


def funnel_profile_id(funnel_id: str, index: int) -> str:
    """Profile of a funnel's ``index``-th session: pairs share one, as a returning visitor does."""
    return "pro_" + short_id(f"{funnel_id}:profile:{index // 2}")


_FUNNEL_POOL = [short_id(f"funnel:{i}") for i in range(6)]
_ORIGINS = [
    "https://fitquiz.example/onboarding",
    "https://sleepwell.example/quiz",
    "https://get.mealplan.example/start",
    "https://lingo.example/funnel/intro",
    "https://calm-mind.example/",
    "https://fitquiz.example/onboarding/v2",
]

# city, country, region_code, postal_code, timezone, locale_code, locale (display)
_PLACES = [
    ("London", "GB", "ENG", "SW1A 1AA", "Europe/London", "en_GB", "🇬🇧 English"),
    ("Birmingham", "GB", "ENG", "B1 1BB", "Europe/London", "en_GB", "🇬🇧 English"),
    ("New York", "US", "NY", "10001", "America/New_York", "en_US", "🇺🇸 English"),
    ("Austin", "US", "TX", "78701", "America/Chicago", "en_US", "🇺🇸 English"),
    ("Los Angeles", "US", "CA", "90012", "America/Los_Angeles", "es_US", "🇪🇸 Spanish"),
    (
        "São Paulo",
        "BR",
        "SP",
        "01310-100",
        "America/Sao_Paulo",
        "pt_BR",
        "🇧🇷 Portuguese",
    ),
    ("Zürich", "CH", "ZH", "8001", "Europe/Zurich", "de_CH", "🇩🇪 German"),
    ("Kraków", "PL", "12", "31-042", "Europe/Warsaw", "pl_PL", "🇵🇱 Polish"),
    ("Tōkyō", "JP", "13", "100-0001", "Asia/Tokyo", "ja_JP", "🇯🇵 Japanese"),
    ("München", "DE", "BY", "80331", "Europe/Berlin", "de_DE", "🇩🇪 German"),
    ("Madrid", "ES", "MD", "28013", "Europe/Madrid", "es_ES", "🇪🇸 Spanish"),
    ("Paris", "FR", "IDF", "75001", "Europe/Paris", "fr_FR", "🇫🇷 French"),
    ("Toronto", "CA", "ON", "M5H 2N2", "America/Toronto", "en_CA", "🇺🇸 English"),
    (
        "Ciudad de México",
        "MX",
        "CMX",
        "06000",
        "America/Mexico_City",
        "es_MX",
        "🇲🇽 Spanish",
    ),
    ("Sydney", "AU", "NSW", "2000", "Australia/Sydney", "en_AU", "🇦🇺 English"),
    ("İstanbul", "TR", "34", "34110", "Europe/Istanbul", "tr_TR", "🇹🇷 Turkish"),
    ("Mumbai", "IN", "MH", "400001", "Asia/Kolkata", "en_IN", "🇮🇳 English"),
    ("서울", "KR", "11", "04524", "Asia/Seoul", "ko_KR", "🇰🇷 Korean"),
]

_IOS = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
_BLINK = "AppleWebKit/537.36 (KHTML, like Gecko)"
_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS {} like Mac OS X)"
_ANDROID = "Mozilla/5.0 (Linux; Android {})"
_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"
_SAFARI = "Mobile/15E148 Safari/604.1"
_CHROME_MOBILE = "Mobile Safari/537.36"
_WEBVIEW = "Version/4.0 Chrome/126.0.6478.71 Mobile Safari/537.36"
# (weight, parts joined by spaces): mobile and in-app browsers dominate paid-social funnels.
_USER_AGENTS: list[tuple[int, tuple[str, ...]]] = [
    (22, (_IPHONE.format("17_5"), _IOS, "Version/17.5", _SAFARI)),
    (14, (_ANDROID.format("14; Pixel 8"), _BLINK, "Chrome/126.0.6478.122", _CHROME_MOBILE)),
    (
        6,
        (
            _ANDROID.format("13; SM-S918B"),
            _BLINK,
            "SamsungBrowser/25.0 Chrome/121.0.0.0",
            _CHROME_MOBILE,
        ),
    ),
    (4, ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X)", _IOS, "Version/17.4", _SAFARI)),
    (6, (_WIN, _BLINK, "Chrome/126.0.0.0 Safari/537.36")),
    (3, (_WIN, _BLINK, "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87")),
    (2, (_WIN.replace(")", "; rv:127.0)"), "Gecko/20100101 Firefox/127.0")),
    (4, (_MAC, _BLINK, "Chrome/126.0.0.0 Safari/537.36")),
    (4, (_MAC, _IOS, "Version/17.5 Safari/605.1.15")),
    (1, (_MAC.replace(")", "; rv:127.0)"), "Gecko/20100101 Firefox/127.0")),
    (
        12,
        (
            _IPHONE.format("17_5_1"),
            _IOS,
            "Mobile/15E148 Instagram 337.0.3.23.54 (iPhone15,3; iOS 17_5_1; en_US; en;",
            "scale=3.00; 1290x2796; 613436148)",
        ),
    ),
    (
        8,
        (
            _IPHONE.format("17_5"),
            _IOS,
            "Mobile/15E148",
            "[FBAN/FBIOS;FBAV/470.0.0.38.108;FBBV/620128131;FBDV/iPhone14,5;FBMD/iPhone;"
            "FBSN/iOS;FBSV/17.5;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
        ),
    ),
    (
        6,
        (
            _ANDROID.format("14; SM-A546B Build/UP1A.231005.007; wv"),
            _BLINK,
            _WEBVIEW,
            "[FB_IAB/FB4A;FBAV/471.0.0.35.80;]",
        ),
    ),
    (
        4,
        (
            _ANDROID.format("13; 2201117TY Build/TP1A.220624.014; wv"),
            _BLINK,
            _WEBVIEW,
            "Instagram 336.0.0.35.90 Android (33/13; 440dpi; 1080x2190; Xiaomi;",
            "2201117TY; spes; qcom; en_US; 614186215)",
        ),
    ),
    (
        6,
        (
            _IPHONE.format("17_4_1"),
            _IOS,
            "Mobile/15E148 musical_ly_34.5.0 JsSdk/2.0 NetType/WIFI Channel/App Store",
            "ByteLocale/en Region/US ByteFullLocale/en-US WKWebView/1",
            "BytedanceWebview/d8a21c6",
        ),
    ),
    (
        3,
        (
            _ANDROID.format("12; SM-G991B Build/SP1A.210812.016; wv"),
            _BLINK,
            _WEBVIEW,
            "trill_340203 JsSdk/1.0 NetType/4G Channel/googleplay AppName/trill",
            "app_version/34.2.3 ByteLocale/en Region/US BytedanceWebview/d8a21c6",
        ),
    ),
    (
        1,
        (
            _ANDROID.format("6.0.1; Nexus 5X Build/MMB29P"),
            _BLINK,
            "Chrome/126.0.6478.126 Mobile Safari/537.36",
            "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ),
    ),
]
_UA_WEIGHTS = [w for w, _ in _USER_AGENTS]
_UA_STRINGS = [" ".join(parts) for _, parts in _USER_AGENTS]

# utm_source -> the click ids that source appends to landing URLs.
_SOURCES = {
    "facebook": ("fbclid",),
    "instagram": ("fbclid",),
    "tiktok": ("ttclid",),
    "google": ("gclid", "wbraid", "gbraid"),
    "bing": ("msclkid",),
    "twitter": ("twclid",),
    "linkedin": ("li_fat_id",),
    "newsletter": (),
}
_MEDIUMS = ["cpc", "paid_social", "social", "email", "display", "Instagram_Stories"]
_CAMPAIGNS = [
    "spring_sale_2025",
    "été_promo",
    "retarget-30d",
    "lal_1pct_purchasers",
    "brand",
]
_TERMS = ["weight loss", "sleep better", "meal plan", "ダイエット", "perder peso"]

_GOALS = [
    "lose_weight",
    "build_muscle",
    "sleep_better",
    "reduce_stress",
    "eat_healthier",
]
_NAMES = [
    "Zoë",
    "José",
    "Łukasz",
    "さくら",
    "Ana 💪",
    "Chloé",
    "Jürgen",
    "Priya",
    "Mia",
]
_NOTES = [
    "I want to feel better before summer ☀️",
    "Quiero correr 10 km 🏃‍♀️",
    "Chcę schudnąć przed ślubem",
    "夏までに5kg痩せたい",
    "No sugar after 6pm, please!",
    "",
]


def _rng(seed: str) -> random.Random:
    return random.Random(hashlib.sha256(seed.encode()).digest())


# Tokens are random bytes run through bytes.translate, in C: generating a session is the
# simulator's main cost whenever the benchmark asks for an id it has not seen yet.
_TO_URLSAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" * 4


def _ulid(rng: random.Random) -> str:
    return rng.randbytes(26).translate(_TO_CROCKFORD).decode()


def _urlsafe(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).translate(_TO_URLSAFE).decode()


def _click_id(rng: random.Random, name: str) -> str:
    if name == "fbclid":
        return "IwAR" + _urlsafe(rng, 56)
    if name == "gclid":
        return "Cj0KCQjw" + _urlsafe(rng, 80)
    if name == "ttclid":
        return "E.C.P." + _urlsafe(rng, 40)
    if name == "msclkid":
        return rng.randbytes(16).hex()
    if name == "li_fat_id":
        h = rng.randbytes(16).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return "0AAAAA" + _urlsafe(rng, 30)


def _query_params(rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.15:  # organic visit: no query at all
        return {}
    source = rng.choice(list(_SOURCES))
    params = {"utm_source": source}
    if rng.random() < 0.9:
        params["utm_medium"] = rng.choice(_MEDIUMS)
    if rng.random() < 0.85:
        params["utm_campaign"] = rng.choice(_CAMPAIGNS)
    if rng.random() < 0.3:
        params["utm_term"] = rng.choice(_TERMS)
    if rng.random() < 0.4:
        params["utm_content"] = f"video_{rng.randint(1, 40)}_hook{rng.choice('abc')}"
    clicks = _SOURCES[source]
    if clicks and rng.random() < 0.8:
        name = rng.choice(clicks)
        params[name] = _click_id(rng, name)
    if source in ("facebook", "instagram") and rng.random() < 0.5:
        params["ad_id"] = str(rng.randint(10**17, 10**18 - 1))
    return params


def _ip(rng: random.Random) -> str:
    # Documentation ranges only (RFC 5737 / 3849): realistic shapes, nobody's real address.
    if rng.random() < 0.25:
        return "2001:db8:" + ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(6))
    return f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}"


def _reply(screen: str, element: str, value: Any) -> dict[str, Any]:
    return {"screen_id": screen, "element_id": element, "value": value}


def _replies(rng: random.Random) -> list[dict[str, Any]]:
    """A quiz as a completed onboarding leaves it: options, numbers, multi-select, date, text."""
    year = rng.randint(1958, 2006)
    replies = [
        _reply("gender", "gender_options", rng.choice(["female", "male", "non_binary"])),
        _reply("goal", "goal_multi", rng.sample(_GOALS, rng.randint(1, 3))),
        _reply("age", "age_input", 2025 - year),
        _reply(
            "birthday",
            "birth_date",
            f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        ),
        _reply("height", "height_cm", rng.randint(150, 200)),
        _reply("weight", "weight_kg", rng.randint(48, 130)),
        # An editor id without its "screen_" prefix, as for screens with no custom id.
        _reply(_ulid(rng), _ulid(rng), rng.choice(["1-2", "3-4", "5+"])),
        _reply("activity", "activity_level", rng.choice(["sedentary", "light", "active"])),
        _reply("name", "name_input", rng.choice(_NAMES)),
        _reply("notes", "notes_text", rng.choice(_NOTES)),
        _reply("email", "email_input", f"user{rng.randint(1000, 99999)}@example.com"),
        _reply("consent", "marketing_opt_in", rng.choice(["yes", "no"])),
    ]
    # Some funnels skip optional screens: drop a few, keep the order.
    keep = rng.randint(8, len(replies))
    drop = set(rng.sample(range(2, len(replies)), len(replies) - keep))
    return [r for i, r in enumerate(replies) if i not in drop]


def make_session(
    session_id: str, *, funnel_id: str | None = None, index: int = 0
) -> dict[str, Any]:
    """The Get Session body for ``session_id``; equal arguments give equal dicts."""
    rng = _rng(session_id)
    faults = parse_faults(session_id)
    if funnel_id is None:
        funnel_id = rng.choice(_FUNNEL_POOL)
        created_at = EPOCH - rng.randrange(_WINDOW_S)
        profile_id = "pro_" + _ulid(rng)
    else:
        created_at = funnel_created_at(funnel_id, index)
        profile_id = funnel_profile_id(funnel_id, index)
    origin = _ORIGINS[int(hashlib.sha256(funnel_id.encode()).hexdigest(), 16) % len(_ORIGINS)]
    params = _query_params(rng)
    city, country, region, postal, tz, locale_code, locale = rng.choice(_PLACES)
    attributes: dict[str, Any] = {
        "city": city,
        "country": country,
        "ip": _ip(rng),
        "postal_code": postal,
        "region_code": region,
        "locale_code": locale_code,
        "timezone": tz,
    }
    session: dict[str, Any] = {
        "id": session_id,
        "funnel_id": funnel_id,
        "profile_id": profile_id,
        "created_at": created_at,
        "origin": origin,
        "query": urlencode(params, quote_via=quote),
        "query_params": params,
        "user_agent": rng.choices(_UA_STRINGS, _UA_WEIGHTS)[0],
        "attributes": attributes,
        "replies": _replies(rng),
    }
    if rng.random() < 0.3:
        session["experiment_id"] = _ulid(rng)
    if rng.random() < 0.5:
        session["locale"] = locale
    if faults.anon:
        attributes.update(ip="", postal_code="")
        session.update(user_agent="", replies=[])
    if faults.extra:
        session["fox_extra_field"] = {
            "note": "added by a newer API",
            "score": 0.87,
            "tags": ["🦊", "beta"],
        }
        attributes["fox_asn"] = 64_496
        attributes["fox_connection"] = {"type": "cellular", "carrier": "Vodafone"}
    for shape in faults.shapes:
        if shape in _SHAPED:  # all but notobject: session_body's, as this returns an object
            session = _SHAPED[shape](session)
    return session


# Fields FunnelFox documents that the enrichment can do without (the ``nullfields`` token).
OPTIONAL_FIELDS = (
    "attributes",
    "user_agent",
    "query",
    "query_params",
    "replies",
    "origin",
    "profile_id",
    "experiment_id",
    "locale",
)


def _with_reply(reply: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda session: {**session, "replies": [*session["replies"], reply]}


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda session: {k: v for k, v in session.items() if k != key}


# The body shapes named in workshop/faults.py (SHAPES), each a session → a new session;
# notobject is session_body's.
_SHAPED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "objreply": _with_reply(_reply("height", "height_picker", {"value": 180, "unit": "cm"})),
    "boolreply": _with_reply(_reply("consent", "terms_checkbox", True)),
    "nouseragent": _without("user_agent"),
    "nullattrs": lambda session: {**session, "attributes": dict.fromkeys(session["attributes"])},
    "noattributes": _without("attributes"),
    "nullfields": lambda session: {**session, **dict.fromkeys(OPTIONAL_FIELDS)},
    "bare": lambda session: {"id": session["id"], "created_at": session["created_at"]},
    "noid": _without("id"),
    "otherid": lambda session: {**session, "id": "ses_00000000000000000000000000"},
    "nocreatedat": _without("created_at"),
}
assert set(SHAPES) - set(_SHAPED) == {"notobject"}, "every other shape has a builder"


def _invalid_body(session_id: str) -> bytes:
    # Shaped like a session but breaks the contract: created_at not a number (replies missing
    # too, which alone would be accepted).
    session = make_session(session_id)
    session["created_at"] = "yesterday"
    del session["replies"]
    return orjson.dumps(session)


@lru_cache(maxsize=100_000)
def session_body(session_id: str, funnel_id: str | None = None, index: int = 0) -> bytes:
    """The rendered Get Session 200 body, honouring ``notjson``, ``invalid`` and ``notobject``."""
    faults = parse_faults(session_id)
    if faults.not_json:
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    if faults.invalid:
        return _invalid_body(session_id)
    session = make_session(session_id, funnel_id=funnel_id, index=index)
    if faults.big_kib is not None:
        # An unknown field (consumers keep those) fills the body to the size asked for.
        room = faults.big_kib * 1024 - len(orjson.dumps(session)) - len(',"padding":""')
        session["padding"] = "x" * max(0, room)
    return orjson.dumps([session] if "notobject" in faults.shapes else session)


def rfc3339(unix_s: int) -> str:
    """Unix seconds as the RFC 3339 UTC string the list endpoint uses."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=100_000)
def list_item_body(session_id: str, funnel_id: str, index: int) -> bytes:
    """One rendered session as ``GET /sessions`` lists it (``created_at`` as RFC 3339)."""
    session = make_session(session_id, funnel_id=funnel_id, index=index)
    session["created_at"] = rfc3339(session["created_at"])
    return orjson.dumps(session)


@dataclass(frozen=True, slots=True)
class FunnelEntry:
    """Where one simulated funnel session sits in the catalog."""

    session_id: str
    funnel_id: str
    index: int
    created_at: int
    profile_id: str


class Catalog:
    """The sessions of the configured funnels ``{funnel_id: n_sessions}``, newest first."""

    def __init__(self, funnels: Mapping[str, int] | None = None) -> None:
        self.funnels = dict(funnels or {})
        self.by_funnel = {
            fid: [
                FunnelEntry(
                    funnel_session_id(fid, i),
                    fid,
                    i,
                    funnel_created_at(fid, i),
                    funnel_profile_id(fid, i),
                )
                for i in range(n)
            ]
            for fid, n in self.funnels.items()
        }
        everything = [e for entries in self.by_funnel.values() for e in entries]
        self.newest_first = sorted(everything, key=lambda e: (-e.created_at, e.session_id))
        self.by_id = {e.session_id: e for e in everything}

    def select(self, funnel_id: str | None, profile_id: str | None) -> list[FunnelEntry]:
        """Sessions matching the list endpoint's filters, newest first."""
        entries = self.newest_first if funnel_id is None else self.by_funnel.get(funnel_id, [])
        if profile_id is not None:
            entries = [e for e in entries if e.profile_id == profile_id]
        return entries
