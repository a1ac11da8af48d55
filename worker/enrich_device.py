"""The device behind a session: its type, OS and browser, read from the user agent."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import ua_parser
from pydantic import BaseModel, ConfigDict
from ua_parser.re2 import Resolver as Re2Resolver

DeviceType = Literal["mobile", "tablet", "desktop", "bot", "other"]

# Crawlers that ua-parser does not tag with the "Spider" device family (it tags most):
# Bytespider looks like an Android phone, and headless browsers look like desktops.
_CRAWLER = re.compile(r"spider|crawler|headlesschrome|phantomjs|lighthouse", re.IGNORECASE)
# Televisions and Fire TV sticks run Android without "Mobile"; they are not tablets.
_TV = re.compile(r"\bTV\b|SmartTV|\bAFT[A-Z]")
_MOBILE_OS = frozenset(
    {
        "iOS",
        "Windows Phone",
        "Windows Mobile",
        "BlackBerry OS",
        "KaiOS",
        "Firefox OS",
        "Symbian OS",
        "Symbian^3",
    }
)
_DESKTOP_OS = frozenset({"Mac OS X", "macOS", "Chrome OS", "Linux", "FreeBSD"})


class Device(BaseModel):
    """The kind of device, its operating system and its browser."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: DeviceType = "other"
    os: str | None = None
    os_version: str | None = None
    browser: str | None = None
    browser_version: str | None = None


def version_of(major: str | None, minor: str | None = None, patch: str | None = None) -> str | None:
    """Join version parts as "17.4.1", stopping at the first missing one."""
    parts: list[str] = []
    for part in (major, minor, patch):
        if not part:
            break
        parts.append(part)
    return ".".join(parts) or None


def device_type(ua: str, browser: str | None, os: str | None, device: str | None) -> DeviceType:
    """Classify a user agent from its raw string and ua-parser's family names."""
    if (
        device == "Spider"
        or _CRAWLER.search(ua)
        or (browser is not None and browser.lower().endswith("bot"))
    ):
        return "bot"
    if _TV.search(ua):
        return "other"
    if (
        device == "iPad"
        or "iPad" in ua
        or "Tablet" in ua
        or "Silk" in ua
        or "Kindle" in ua
        or ("Android" in ua and "Mobile" not in ua)
    ):
        return "tablet"
    if device in ("iPhone", "iPod") or os in _MOBILE_OS or "Mobi" in ua:
        return "mobile"
    # Android never gets this far: with "Mobile" it is a phone, without it a tablet.
    desktop = os in _DESKTOP_OS or (os or "").startswith("Windows")
    return "desktop" if desktop or "X11" in ua or "Linux" in ua else "other"


@lru_cache(maxsize=1)
def _parser() -> ua_parser.Parser:
    # RE2 holds the ~1,000 rules in ~9 MiB; the Rust regex set takes ~27 MiB, paid again in
    # every pool process (measured here). Uncached parses cost ~50 µs against ~25 µs.
    return ua_parser.Parser(Re2Resolver(ua_parser.load_builtins()))


def warm_up() -> None:
    """Build and compile the parser now (about a second of CPU the first time in a process).

    Paid at a process's start instead of inside its first batch, where it would stall the
    event loop while fetches wait for their rate-limit slots, which would then all start at
    once.
    """
    _parser().parse("Mozilla/5.0 (X11; Linux x86_64)")


@lru_cache(maxsize=4096)
def parse_device(ua: str) -> Device:
    """Parse a user agent string into a Device (cached: parsing costs far more than a lookup)."""
    ua = ua.strip()
    if not ua:
        return Device()
    result = _parser().parse(ua)
    agent, os, hardware = result.user_agent, result.os, result.device
    # ua-parser reports a failed match as None, and older rules as the family "Other".
    browser = agent.family if agent and agent.family != "Other" else None
    os_name = os.family if os and os.family != "Other" else None
    family = hardware.family if hardware and hardware.family != "Other" else None
    return Device(
        type=device_type(ua, browser, os_name, family),
        os=os_name,
        os_version=version_of(os.major, os.minor, os.patch) if os_name and os else None,
        browser=browser,
        browser_version=(
            version_of(agent.major, agent.minor, agent.patch) if browser and agent else None
        ),
    )
