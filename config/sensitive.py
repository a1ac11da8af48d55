"""What in a configuration is secret: the values every scrubber must keep out of logs."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that may be a secret: its password (as written and decoded), its
    query string, and the value of any query option named like a password
    (``?password=``, a Sentinel URL's ``sentinel_password=``)."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [parts.password, parts.query]
    if parts.password:
        found.append(unquote(parts.password))
    found += [value for key, value in parse_qsl(parts.query) if "password" in key.lower()]
    return list(dict.fromkeys(value for value in found if value))


def display_url(url: str) -> str:
    """A URL as a listing may show it: scheme, host(s), port and path only, rebuilt from its
    parts. Credentials, query string and fragment are dropped whatever they contain (a
    password may hold '@', '/' or '#'); the hosts are taken after the last '@' as urllib does,
    which keeps a Sentinel URL's comma-separated list."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{hosts}{parts.path}"
