"""Enrichment, table-driven: a session given, the enrichment expected."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.enrich import (
    CLICK_ID_PARAMS,
    Device,
    Enrichment,
    Geo,
    Locale,
    Utm,
    country_name,
    enrich,
    parse_device,
    parse_locale,
    text_of,
    utc_offset_at,
)
from worker.enrich_device import version_of
from worker.models import Session

JAN_15_2024 = 1705320000  # 12:00 UTC, winter in the north
JUL_15_2024 = 1721044800  # 12:00 UTC, summer in the north

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
)
BASE: dict[str, Any] = {
    "id": "ses_01HZX0000000000000000000AB",
    "funnel_id": "01HZX0000000000000000000FN",
    "profile_id": "pro_01HZX0000000000000000000PR",
    "created_at": 1716672462,
    "origin": "https://funnel.example.com/quiz",
    "user_agent": IPHONE,
    "attributes": {
        "city": "Birmingham",
        "country": "GB",
        "ip": "203.0.113.7",
        "postal_code": "B1 1AA",
        "region_code": "ENG",
        "locale_code": "en_GB",
        "timezone": "Europe/London",
    },
    "query": "utm_source=facebook&fbclid=IwAR0abc",
    "query_params": {"utm_source": "facebook", "fbclid": "IwAR0abc"},
    "replies": [{"screen_id": "goal", "element_id": "options", "value": "lose_weight"}],
    "locale": "🇬🇧 English",
}


def session(attributes: dict[str, Any] | None = None, **fields: Any) -> Session:
    """BASE with top-level ``fields`` replaced and ``attributes`` merged into its own."""
    data = {**BASE, **fields}
    data["attributes"] = {**BASE["attributes"], **(attributes or {})}
    return Session.model_validate(data)


def reply(screen: str, element: str, value: Any) -> dict[str, Any]:
    return {"screen_id": screen, "element_id": element, "value": value}


# --- created_at ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unix", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (951782400, "2000-02-29T00:00:00Z"),
        (1716672462, "2024-05-25T21:27:42Z"),
        (1719791999, "2024-06-30T23:59:59Z"),
        (2147483648, "2038-01-19T03:14:08Z"),  # past 32-bit time_t
    ],
)
def test_created_at_is_rfc3339_utc(unix: int, expected: str) -> None:
    assert enrich(session(created_at=unix)).created_at == expected


# --- answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([], {}),
        (
            [reply("goals", "multi", ["lose_weight", "sleep_better"])],
            {"goals": {"multi": ["lose_weight", "sleep_better"]}},
        ),
        ([reply("about", "age", 34)], {"about": {"age": 34}}),
        ([reply("about", "age", "34")], {"about": {"age": "34"}}),  # kept apart from 34
        ([reply("about", "weight", 72.5)], {"about": {"weight": 72.5}}),
        ([reply("about", "birthday", "1990-04-01")], {"about": {"birthday": "1990-04-01"}}),
        (
            [reply("about", "name", "Zoë 李 🚀")],
            {"about": {"name": "Zoë 李 🚀"}},
        ),
        ([reply("about", "nickname", None)], {"about": {"nickname": None}}),
        (
            [reply("q", "mixed", [1, "two"]), reply("q", "empty", [])],
            {"q": {"mixed": [1, "two"], "empty": []}},
        ),
        (  # a repeated element keeps the last value and its first place
            [
                reply("goal", "options", "a"),
                reply("goal", "other", "x"),
                reply("goal", "options", "b"),
            ],
            {"goal": {"options": "b", "other": "x"}},
        ),
        (
            [reply("s2", "e", 1), reply("s1", "e", 2), reply("s2", "f", 3)],
            {"s2": {"e": 1, "f": 3}, "s1": {"e": 2}},
        ),
    ],
)
def test_answers_group_by_screen_then_element(
    replies: list[dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> None:
    answers = enrich(session(replies=replies)).answers
    assert answers == expected
    # dict equality ignores order: compare it too, and the value types (34 is not "34")
    assert [(s, list(e.items())) for s, e in answers.items()] == [
        (s, list(e.items())) for s, e in expected.items()
    ]
    for screen, elements in expected.items():
        for element, value in elements.items():
            assert type(answers[screen][element]) is type(value)


# --- utm and click ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_params", "expected"),
    [
        (
            {
                "utm_source": "facebook",
                "utm_medium": "paid_social",
                "utm_campaign": "spring_sale",
                "utm_term": "keto diet",
                "utm_content": "video_1",
            },
            Utm(
                source="facebook",
                medium="paid_social",
                campaign="spring_sale",
                term="keto diet",
                content="video_1",
            ),
        ),
        ({"utm_source": "google", "utm_campaign": "brand"}, Utm(source="google", campaign="brand")),
        ({}, Utm()),
        ({"ref": "x", "UTM_SOURCE": "case matters"}, Utm()),
        ({"utm_source": "  tiktok \n", "utm_medium": "   "}, Utm(source="tiktok")),
        ({"utm_source": "", "utm_term": ""}, Utm()),
        ({"utm_source": ["first", "second"], "utm_medium": []}, Utm(source="first")),
        ({"utm_content": 42, "utm_term": None, "utm_medium": {"a": 1}}, Utm(content="42")),
    ],
)
def test_utm(query_params: dict[str, Any], expected: Utm) -> None:
    assert enrich(session(query_params=query_params)).utm == expected


@pytest.mark.parametrize(
    ("query_params", "expected"),
    [
        ({}, {}),
        ({"utm_source": "facebook"}, {}),
        ({"fbclid": "IwAR0abc"}, {"fbclid": "IwAR0abc"}),
        (
            {"gclid": "Cj0K", "utm_source": "google", "gbraid": "0AAA", "wbraid": "CkQK"},
            {"gclid": "Cj0K", "gbraid": "0AAA", "wbraid": "CkQK"},
        ),
        ({"ttclid": " E.C.P.abc ", "msclkid": ""}, {"ttclid": "E.C.P.abc"}),
        ({"ScCid": "snap-1", "sccid": "snap-2"}, {"ScCid": "snap-1", "sccid": "snap-2"}),
        ({"FBCLID": "not a known key"}, {}),
        (
            {"epik": "dj0y", "rdt_cid": "123", "li_fat_id": "abc"},
            {"epik": "dj0y", "rdt_cid": "123", "li_fat_id": "abc"},
        ),
        ({"twclid": ["first", "second"], "yclid": None}, {"twclid": "first"}),
        (
            {key: f"id-{key}" for key in CLICK_ID_PARAMS},
            {key: f"id-{key}" for key in CLICK_ID_PARAMS},
        ),
    ],
)
def test_click_ids(query_params: dict[str, Any], expected: dict[str, str]) -> None:
    click_ids = enrich(session(query_params=query_params)).click_ids
    assert list(click_ids.items()) == list(expected.items())  # the query's order too


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "x"),
        ("  x  ", "x"),
        ("", None),
        (" \t", None),
        (None, None),
        (7, "7"),
        (True, None),
        (["a", "b"], "a"),
        ([], None),
        ({"a": "b"}, None),
    ],
)
def test_text_of(value: Any, expected: str | None) -> None:
    assert text_of(value) == expected


# --- device ------------------------------------------------------------------------------

ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.6367.82 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/123.0.6312.118 Safari/537.36"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15"
)
LINUX_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
UBUNTU_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
CHROME_OS = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
INSTAGRAM_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Mobile/15E148 Instagram 329.0.3.29.108 (iPhone15,2; iOS 17_4_1;"
    " en_US; en; scale=3.00; 1179x2556; 590446302)"
)
INSTAGRAM_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv)"
    " AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82"
    " Mobile Safari/537.36 Instagram 329.0.0.41.93 Android (34/14; 480dpi; 1080x2340;"
    " samsung; SM-S918B; dm3q; qcom; en_GB; 590046217)"
)
FACEBOOK_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Mobile/21E236 [FBAN/FBIOS;FBAV/459.0.0.39.105;FBBV/589236839;"
    "FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/17.4.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]"
)
FACEBOOK_ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; SM-A536B Build/TP1A.220624.014; wv)"
    " AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82"
    " Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/460.0.0.48.109;]"
)
TIKTOK_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Mobile/15E148 musical_ly_33.8.0 JsSdk/2.0 NetType/WIFI"
    " Channel/App Store ByteLocale/en Region/US WKWebView/1 BytedanceWebview/d8a21c6"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/124.0.6367.201 Mobile Safari/537.36"
    " (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)
BYTESPIDER = (
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"
)
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " HeadlessChrome/124.0.0.0 Safari/537.36"
)
CUBOT_PHONE = (  # a phone brand that ends in "bot"
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
)
KINDLE_FIRE = (
    "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Silk/124.2.1 like Chrome/124.0.6367.179 Safari/537.36"
)
FIREFOX_ANDROID_TABLET = "Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0"
ANDROID_TV = (
    "Mozilla/5.0 (Linux; Android 9; SHIELD Android TV) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


# user agent → type, os, os_version, browser, browser_version
DEVICES: list[tuple[str, str, str | None, str | None, str | None, str | None]] = [
    (IPHONE, "mobile", "iOS", "17.4.1", "Mobile Safari", "17.4.1"),
    (ANDROID_PHONE, "mobile", "Android", "14", "Chrome Mobile", "124.0.6367"),
    (ANDROID_TABLET, "tablet", "Android", "13", "Chrome", "123.0.6312"),
    (IPAD, "tablet", "iOS", "16.6", "Mobile Safari", "16.6"),
    (WINDOWS_CHROME, "desktop", "Windows", "10", "Chrome", "124.0.0"),
    (MAC_SAFARI, "desktop", "Mac OS X", "10.15.7", "Safari", "17.4.1"),
    (LINUX_FIREFOX, "desktop", "Linux", None, "Firefox", "125.0"),
    (UBUNTU_FIREFOX, "desktop", "Ubuntu", None, "Firefox", "125.0"),
    (CHROME_OS, "desktop", "Chrome OS", "14541.0.0", "Chrome", "124.0.0"),
    (INSTAGRAM_IOS, "mobile", "iOS", "17.4.1", "Instagram", "329.0.3"),
    (INSTAGRAM_ANDROID, "mobile", "Android", "14", "Instagram", "329.0.0"),
    (FACEBOOK_IOS, "mobile", "iOS", "17.4.1", "Facebook", "459.0.0"),
    (FACEBOOK_ANDROID, "mobile", "Android", "13", "Facebook", "460.0.0"),
    (TIKTOK_IOS, "mobile", "iOS", "17.3.1", "TikTok", "33.8.0"),
    (GOOGLEBOT, "bot", None, None, "Googlebot", "2.1"),
    (GOOGLEBOT_SMARTPHONE, "bot", "Android", "6.0.1", "Googlebot", "2.1"),
    (BYTESPIDER, "bot", "Android", "5.0", "Bytespider", None),
    (HEADLESS_CHROME, "bot", "Linux", None, "HeadlessChrome", "124.0.0"),
    (CUBOT_PHONE, "mobile", "Android", "10", "Chrome Mobile", "124.0.0"),
    (KINDLE_FIRE, "tablet", "Android", "9", "Amazon Silk", "124.2.1"),
    (FIREFOX_ANDROID_TABLET, "tablet", "Android", "14", "Firefox Mobile", "125.0"),
    (ANDROID_TV, "other", "Android", "9", "Chrome", "124.0.0"),
    ("curl/8.4.0", "other", None, None, "curl", "8.4.0"),
    ("hello world", "other", None, None, None, None),
    ("", "other", None, None, None, None),
    ("   ", "other", None, None, None, None),
]


@pytest.mark.parametrize(("ua", "kind", "os", "os_version", "browser", "browser_version"), DEVICES)
def test_device(
    ua: str,
    kind: str,
    os: str | None,
    os_version: str | None,
    browser: str | None,
    browser_version: str | None,
) -> None:
    expected = Device.model_validate(
        {
            "type": kind,
            "os": os,
            "os_version": os_version,
            "browser": browser,
            "browser_version": browser_version,
        }
    )
    assert parse_device(ua) == expected
    assert enrich(session(user_agent=ua)).device == expected


def test_device_parsing_is_cached_per_user_agent() -> None:
    ua = WINDOWS_CHROME + " cache-probe"
    before = parse_device.cache_info()
    first = enrich(session(user_agent=ua)).device
    second = enrich(session(user_agent=ua)).device
    after = parse_device.cache_info()
    assert first == second
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert after.maxsize == 4096


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("17", "4", "1"), "17.4.1"),
        (("17", "4", None), "17.4"),
        (("17", None, "1"), "17"),
        (("10", "", None), "10"),
        ((None, None, None), None),
    ],
)
def test_version_of(parts: tuple[str | None, str | None, str | None], expected: str | None) -> None:
    assert version_of(*parts) == expected


# --- geo -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "created_at", "expected"),
    [
        (
            {},
            JUL_15_2024,
            Geo(
                country_code="GB",
                country_name="United Kingdom",
                region_code="ENG",
                city="Birmingham",
                postal_code="B1 1AA",
                timezone="Europe/London",
                utc_offset="+01:00",
            ),
        ),
        (
            {"country": "gb", "postal_code": " ", "region_code": "", "city": None},
            JAN_15_2024,
            Geo(
                country_code="GB",
                country_name="United Kingdom",
                timezone="Europe/London",
                utc_offset="+00:00",
            ),
        ),
        (
            {
                "country": " in ",
                "city": "Mumbai",
                "region_code": "MH",
                "postal_code": "400001",
                "timezone": "Asia/Kolkata",
            },
            JUL_15_2024,
            Geo(
                country_code="IN",
                country_name="India",
                region_code="MH",
                city="Mumbai",
                postal_code="400001",
                timezone="Asia/Kolkata",
                utc_offset="+05:30",
            ),
        ),
        (
            {"country": "XK", "timezone": "Mars/Olympus_Mons"},
            JUL_15_2024,
            Geo(
                country_code="XK",
                region_code="ENG",
                city="Birmingham",
                postal_code="B1 1AA",
                timezone="Mars/Olympus_Mons",
            ),
        ),
        (
            {"country": "zz", "timezone": ""},
            JUL_15_2024,
            Geo(country_code="zz", region_code="ENG", city="Birmingham", postal_code="B1 1AA"),
        ),
        (
            {
                "country": None,
                "region_code": None,
                "city": None,
                "postal_code": None,
                "timezone": None,
            },
            JUL_15_2024,
            Geo(),
        ),
    ],
)
def test_geo(attributes: dict[str, Any], created_at: int, expected: Geo) -> None:
    assert enrich(session(attributes=attributes, created_at=created_at)).geo == expected


@pytest.mark.parametrize(
    ("tz", "unix", "expected"),
    [
        ("Europe/London", JAN_15_2024, "+00:00"),
        ("Europe/London", JUL_15_2024, "+01:00"),
        ("Europe/London", 1711846799, "+00:00"),  # 2024-03-31 00:59:59 UTC: last GMT second
        ("Europe/London", 1711846800, "+01:00"),  # 01:00:00 UTC: BST starts
        ("Europe/London", 1729990799, "+01:00"),  # 2024-10-27 00:59:59 UTC: last BST second
        ("Europe/London", 1729990800, "+00:00"),
        ("America/New_York", JAN_15_2024, "-05:00"),
        ("America/New_York", JUL_15_2024, "-04:00"),
        ("Australia/Sydney", JAN_15_2024, "+11:00"),  # southern summer
        ("Australia/Sydney", JUL_15_2024, "+10:00"),
        ("Asia/Kolkata", JAN_15_2024, "+05:30"),
        ("Asia/Kolkata", JUL_15_2024, "+05:30"),
        ("Asia/Kathmandu", JUL_15_2024, "+05:45"),
        ("America/St_Johns", JAN_15_2024, "-03:30"),
        ("America/St_Johns", JUL_15_2024, "-02:30"),
        ("Australia/Adelaide", JAN_15_2024, "+10:30"),
        ("Pacific/Chatham", JAN_15_2024, "+13:45"),
        ("UTC", JUL_15_2024, "+00:00"),
        ("Africa/Monrovia", 0, "-00:44"),  # -00:44:30 in 1970: seconds dropped
        (" Europe/Berlin ", JUL_15_2024, "+02:00"),
        ("Mars/Olympus_Mons", JUL_15_2024, None),
        ("europe/london", JUL_15_2024, None),
        ("../../etc/passwd", JUL_15_2024, None),
        ("/etc/localtime", JUL_15_2024, None),
        ("", JUL_15_2024, None),
    ],
)
def test_utc_offset_at(tz: str, unix: int, expected: str | None) -> None:
    assert utc_offset_at(tz, unix) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("GB", "United Kingdom"),
        ("gb", "United Kingdom"),
        ("US", "United States"),
        ("RU", "Russian Federation"),  # pycountry has no common name for it
        ("TW", "Taiwan"),  # common name, not "Taiwan, Province of China"
        ("KR", "South Korea"),
        ("IR", "Iran"),
        ("XK", None),  # Kosovo: used by geo-IP vendors, not in ISO 3166-1
        ("UK", None),
        ("GBR", None),
        ("", None),
        ("Ü1", None),
    ],
)
def test_country_name(code: str, expected: str | None) -> None:
    assert country_name(code) == expected


# --- locale ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale_code", "locale", "expected"),
    [
        ("en_US", "🇪🇸 Spanish", Locale(language="en", region="US")),
        ("pt-BR", None, Locale(language="pt", region="BR")),
        ("es", None, Locale(language="es")),
        ("EN_gb", None, Locale(language="en", region="GB")),
        ("zh-Hant-TW", None, Locale(language="zh", region="TW")),
        ("zh_Hans", None, Locale(language="zh")),
        ("es-419", None, Locale(language="es", region="419")),
        ("de_DE.UTF-8", None, Locale(language="de", region="DE")),
        (" fr_CA ", None, Locale(language="fr", region="CA")),
        (None, "de-AT", Locale(language="de", region="AT")),
        ("", "it", Locale(language="it")),
        ("not a locale", "fr_FR", Locale(language="fr", region="FR")),
        (None, "🇪🇸 Spanish", Locale()),
        (None, "Spanish", Locale()),
        (None, None, Locale()),
        ("", "", Locale()),
    ],
)
def test_locale(locale_code: str | None, locale: str | None, expected: Locale) -> None:
    given = session(attributes={"locale_code": locale_code}, locale=locale)
    assert enrich(given).locale == expected


@pytest.mark.parametrize("value", ["🇪🇸 Spanish", "English", "e", "en_", "en-US-x", "12"])
def test_parse_locale_refuses_what_is_not_a_code(value: str) -> None:
    assert parse_locale(value) is None


# --- whole sessions ------------------------------------------------------------------


def test_enrich_whole_session() -> None:
    assert enrich(session()) == Enrichment(
        created_at="2024-05-25T21:27:42Z",
        answers={"goal": {"options": "lose_weight"}},
        utm=Utm(source="facebook"),
        click_ids={"fbclid": "IwAR0abc"},
        device=Device(
            type="mobile",
            os="iOS",
            os_version="17.4.1",
            browser="Mobile Safari",
            browser_version="17.4.1",
        ),
        geo=Geo(
            country_code="GB",
            country_name="United Kingdom",
            region_code="ENG",
            city="Birmingham",
            postal_code="B1 1AA",
            timezone="Europe/London",
            utc_offset="+01:00",  # 25 May: summer time
        ),
        locale=Locale(language="en", region="GB"),
    )


def test_anonymized_session_gives_nulls_not_errors() -> None:
    anonymized = session(
        user_agent="",
        replies=[],
        query="",
        query_params={},
        attributes={"ip": "", "postal_code": "", "city": "", "region_code": ""},
    )
    enrichment = enrich(anonymized)
    assert enrichment.answers == {}
    assert enrichment.device == Device(type="other")
    assert enrichment.utm == Utm()
    assert enrichment.click_ids == {}
    assert enrichment.geo.postal_code is None
    assert enrichment.geo.city is None
    assert enrichment.geo.region_code is None
    assert enrichment.model_dump(mode="json")["device"] == {
        "type": "other",
        "os": None,
        "os_version": None,
        "browser": None,
        "browser_version": None,
    }


def test_bare_minimum_session() -> None:
    """Only the fields FunnelFox's Get Session reference requires, attributes empty."""
    bare = Session.model_validate(
        {
            "id": "x",
            "funnel_id": "",
            "profile_id": "",
            "created_at": 0,
            "origin": "",
            "user_agent": "",
            "attributes": {},
            "query_params": {},
            "replies": [],
        }
    )
    assert enrich(bare) == Enrichment(
        created_at="1970-01-01T00:00:00Z",
        answers={},
        utm=Utm(),
        click_ids={},
        device=Device(),
        geo=Geo(),
        locale=Locale(),
    )


MISSING: Any = object()  # a field left out of the session


def given(**fields: Any) -> Session:
    """BASE with top-level ``fields`` replaced (MISSING: left out), validated leniently."""
    data = {k: v for k, v in {**BASE, **fields}.items() if v is not MISSING}
    return Session.model_validate(data)


WHOLE = enrich(given())
NOTHING = {"answers": None, "utm": None, "click_ids": None, "device": None, "geo": None}

# given: session fields replaced or left out; expected: the whole session's enrichment with
# these parts changed. A part is null when its source field is missing, null or unreadable.
PARTIAL: list[Any] = [
    *(
        pytest.param({"user_agent": ua}, {"device": None}, id=f"user_agent-{name}")
        for name, ua in [("missing", MISSING), ("null", None), ("number", 42), ("list", [IPHONE])]
    ),
    pytest.param({"user_agent": ""}, {"device": Device()}, id="user_agent-empty"),
    *(
        pytest.param({"attributes": value}, {"geo": None, "locale": Locale()}, id=f"attrs-{name}")
        for name, value in [("missing", MISSING), ("null", None), ("text", "GB"), ("list", [])]
    ),
    pytest.param(
        {"attributes": MISSING, "locale": "de-AT"},
        {"geo": None, "locale": Locale(language="de", region="AT")},
        id="attributes-missing-locale-code",
    ),
    pytest.param({"attributes": {}}, {"geo": Geo(), "locale": Locale()}, id="attributes-empty"),
    pytest.param(
        {"attributes": {"country": 826, "city": {"n": 1}, "timezone": 1, "locale_code": 3}},
        {"geo": Geo(), "locale": Locale()},
        id="attributes-keys-unreadable",
    ),
    pytest.param(
        {"attributes": {"country": ["US", "GB"], "timezone": "America/Chicago"}},
        {
            "geo": Geo(
                country_code="US",
                country_name="United States",
                timezone="America/Chicago",
                utc_offset="-05:00",
            ),
            "locale": Locale(),
        },
        id="attributes-country-list",
    ),
    *(
        pytest.param({"query_params": v}, {"utm": None, "click_ids": None}, id=f"params-{name}")
        for name, v in [("missing", MISSING), ("null", None), ("text", "a=b"), ("list", [])]
    ),
    *(
        pytest.param({"replies": value}, {"answers": None}, id=f"replies-{name}")
        for name, value in [("missing", MISSING), ("null", None), ("object", {"a": 1})]
    ),
    pytest.param(
        {
            "replies": [
                "lose_weight",
                None,
                {"screen_id": "goal", "value": "x"},
                {"screen_id": "goal", "element_id": 3, "value": "x"},
                {"screen_id": "goal", "element_id": "options"},
                reply("goal", "consent", True),
            ]
        },
        {"answers": {"goal": {"consent": True}}},
        id="replies-unreadable-left-out",
    ),
    *(
        pytest.param({field: value}, {}, id=f"{field}-{name}")
        for field in ("query", "origin", "profile_id", "funnel_id", "experiment_id")
        for name, value in [("missing", MISSING), ("null", None), ("number", 1)]
    ),
    pytest.param({"locale": MISSING}, {}, id="locale-missing"),
    pytest.param(
        {"locale": None, "attributes": {"locale_code": None}},
        {"geo": Geo(), "locale": Locale()},
        id="locale-and-locale_code-null",
    ),
    pytest.param(
        {k: MISSING for k in BASE if k not in ("id", "created_at")},
        {**NOTHING, "locale": Locale()},
        id="only-id-and-created_at",
    ),
    pytest.param(
        {k: None for k in BASE if k not in ("id", "created_at", "funnel_id")},
        {**NOTHING, "locale": Locale()},
        id="every-optional-field-null",
    ),
]


@pytest.mark.parametrize(("fields", "changed"), PARTIAL)
def test_missing_or_unreadable_fields_null_what_they_feed(
    fields: dict[str, Any], changed: dict[str, Any]
) -> None:
    enrichment = enrich(given(**fields))
    assert enrichment == WHOLE.model_copy(update=changed)
    # It serializes: what the payload carries.
    assert Enrichment.model_validate_json(enrichment.model_dump_json()) == enrichment


@pytest.mark.parametrize(
    "value",
    [True, False, {"min": 18, "max": 35}, [{"a": [1, None]}, True], {}, 3.0, "3", 3, None],
    ids=["true", "false", "object", "nested", "empty-object", "float", "digit-text", "int", "null"],
)
def test_answers_hold_any_value_as_sent(value: Any) -> None:
    answers = enrich(given(replies=[reply("s", "e", value)])).answers
    assert answers == {"s": {"e": value}}
    assert type(answers["s"]["e"]) is type(value)  # true is not 1.0, 3.0 is not 3
    dumped = enrich(given(replies=[reply("s", "e", value)])).model_dump(mode="json")
    assert dumped["answers"] == {"s": {"e": value}}


def test_unknown_fields_do_not_change_enrichment() -> None:
    with_extras = session(
        brand_new_field={"nested": [1, 2, 3]},
        experiment_id="exp_1",
        attributes={"asn": 64500, "isp": "Example Telecom"},
        replies=[
            {**reply("goal", "options", "lose_weight"), "element_type": "Options"},
        ],
    )
    assert enrich(with_extras) == enrich(session())


# --- the model itself --------------------------------------------------------------------


def test_json_schema_can_be_generated() -> None:
    for mode in ("validation", "serialization"):
        schema = Enrichment.model_json_schema(mode=mode)
        assert set(schema["properties"]) == {
            "created_at",
            "answers",
            "utm",
            "click_ids",
            "device",
            "geo",
            "locale",
        }
        assert schema["additionalProperties"] is False
        device = schema["$defs"]["Device"]
        assert device["properties"]["type"]["enum"] == [
            "mobile",
            "tablet",
            "desktop",
            "bot",
            "other",
        ]
        for name in ("Utm", "Geo", "Locale", "Device"):
            assert schema["$defs"][name]["additionalProperties"] is False


def test_enrichment_is_frozen_and_round_trips_through_json() -> None:
    enrichment = enrich(session(replies=[reply("q", "multi", ["a", 2])]))
    with pytest.raises(ValidationError):
        enrichment.created_at = "later"  # type: ignore[misc, unused-ignore]
    with pytest.raises(ValidationError):
        Utm.model_validate({"source": "x", "unknown": "y"})
    assert Enrichment.model_validate_json(enrichment.model_dump_json()) == enrichment
