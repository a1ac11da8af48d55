"""``REDIS_URL``, read once: a plain Redis URL, or the Sentinels that know the current primary.

The Sentinel form names every Sentinel and the primary's service name in one URL::

    sentinel://[[user]:password@]host[:port][,host[:port]...][/db]?master=NAME[&sentinel_password=P]

The password authenticates to the Redis servers (primary and replicas); ``sentinel_password``
to the Sentinels when they ask for one. The port defaults to 26379, the database to 0. This is
the one parser of that form: the settings check it, and ``worker.redis_clients`` builds every
Redis client and the broker's options from what it returns. Its errors never echo a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("master", "sentinel_password")
EXAMPLE = "sentinel://host1:26379,host2:26379,host3:26379/0?master=mymaster"
# A sanity bound, far above any server's `databases` (16 by default): which indexes exist is
# the server's to say, and a connection names an index it lacks (redis_clients).
MAX_DB = 2**16 - 1


@dataclass(frozen=True)
class SentinelURL:
    """Where the Sentinels are, which primary they watch, and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> list[str]:
        """The values to keep out of logs."""
        return [s for s in (self.password, self.sentinel_password) if s]

    def kombu_url(self) -> str:
        """kombu's spelling: one ``sentinel://`` URL a Sentinel, separated by ``;``.

        Each carries the credentials and database, since kombu re-reads the URL it switches to.
        """
        userinfo = ""
        if self.password is not None or self.username is not None:
            userinfo = quote(self.username or "", safe="") + ":"
            userinfo += quote(self.password or "", safe="") + "@"
        return ";".join(
            f"{SENTINEL_SCHEME}://{userinfo}{_host(host)}:{port}/{self.db}"
            for host, port in self.sentinels
        )


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The Sentinel form of ``url``, or None for any other scheme; ValueError if malformed."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() != SENTINEL_SCHEME:
        return None
    if ";" in url:
        raise ValueError(f"separate Sentinels with commas, not ';', e.g. {EXAMPLE}")
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_sentinel(entry) for entry in hosts.split(","))
    db_text = parts.path.lstrip("/")
    if db_text:
        check_db_index(db_text)
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
    if unknown:
        # Names only: an option's value may be a password.
        raise ValueError(
            f"has unknown option(s) {', '.join(unknown)}; known: {', '.join(SENTINEL_OPTIONS)}"
        )
    master = options.get("master", [""])[-1].strip()
    if not master:
        raise ValueError(
            f"names no primary: add ?master=<its name at the Sentinels>, e.g. {EXAMPLE}"
        )
    return SentinelURL(
        sentinels=sentinels,
        master=master,
        db=int(db_text or 0),
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password", [""])[-1] or None,
    )


def _sentinel(entry: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` → (host, port)."""
    text = entry.strip()
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        port_text = tail.removeprefix(":") if bracket and tail.startswith(":") else ""
        if not bracket or (tail and not tail.startswith(":")):
            host = ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"has an empty or malformed Sentinel in its host list, e.g. {EXAMPLE}")
    if not port_text:
        return host, SENTINEL_PORT
    if not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"has a Sentinel port that is not a number from 1 to 65535 ({host})")
    return host, int(port_text)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_redis_url(url: str) -> None:
    """Raise ValueError saying what is wrong with a Redis URL (never echoing its password)."""
    if parse_sentinel_url(url) is not None:
        return
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        shown = f"'{parts.scheme}://'" if "://" in url else "no scheme"
        raise ValueError(
            f"must start with redis://, rediss://, unix:// or sentinel:// ({shown} given), "
            "e.g. redis://localhost:6379/0"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host, e.g. redis://localhost:6379/0")
    try:
        parts.port  # noqa: B018 - urllib validates the port when it is read
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    db = parse_qs(parts.query).get("db", [""])[0]
    if parts.scheme != "unix":
        db = parts.path.lstrip("/") or db
    if db:
        check_db_index(db)


def check_db_index(text: str) -> None:
    """Raise ValueError unless ``text`` is a database index from 0 to MAX_DB."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"has a database index that is not a whole number ({text!r})")
    if int(text) > MAX_DB:
        raise ValueError(
            f"has a database index out of range ({text}): at most {MAX_DB}, and below the "
            "server's `databases` setting (16 by default)"
        )
