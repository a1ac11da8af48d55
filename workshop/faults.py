"""Fault directives carried inside session and funnel ids, parsed once per id.

An id is split on ``-``; each token that matches a directive below switches a fault on, anything
else is ignored, so ``ses_abc-s500x2-h410`` is an ordinary id that fails twice upstream and is
refused downstream. "First n" counts requests per id, per server instance.

FunnelFox simulator (``GET /sessions/{id}``):
    s{code}[x{n}]    answer HTTP {code} (first n requests, or always)
    ra{secs}         add ``Retry-After: {secs}`` to those answers
    rad{secs}        add ``Retry-After`` as an HTTP-date {secs} ahead
    drop[x{n}]       close the connection without answering
    slow{ms}[x{n}]   wait {ms} before answering
    notjson          200 with a body that is not JSON
    invalid          200 with JSON that fails validation (created_at is not a number)
    anon             the session looks anonymized (empty ip, user agent, replies, postal code)
    extra            the session carries unknown fields a consumer must keep
  Body shapes FunnelFox may send, all to be delivered (workshop/sessions.py builds them):
    objreply         one more reply whose value is an object (a widget's)
    boolreply        one more reply whose value is a boolean (a checkbox)
    nouseragent      no user_agent field
    nullattrs        an attributes object whose every key is null
    noattributes     no attributes field
    nullfields       attributes, user_agent, query, query_params, replies, origin, profile_id,
                     experiment_id and locale all null
    bare             only id and created_at
  Bodies to be refused (invalid_payload), besides notjson and invalid:
    notobject        a JSON array holding the session
    noid             no id field
    otherid          another session's id
    nocreatedat      no created_at field
    big{kib}         a 200 body of {kib} KiB (a valid session, padded), with Content-Length
    bigchunked{kib}  the same, streamed in chunks without Content-Length

Webhook receiver (directives from the delivered ``data.session.id``):
    h{code}[x{n}], hra{secs}, hrad{secs}, hslow{ms}[x{n}], hdrop[x{n}]   as above

Funnel ids, for ``GET /sessions?filter[funnel_id]=...``:
    repeatcursor     page 2 hands back page 1's ``next_cursor`` forever
    pageerr[x{n}]    requests for page 2 answer 503
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_TIMES = r"(?:x(\d+))?"
_PAGE_ERROR = re.compile(r"pageerr" + _TIMES)
_FLAGS = frozenset({"notjson", "invalid", "anon", "extra"})
SHAPES: tuple[str, ...] = (
    "objreply",
    "boolreply",
    "nouseragent",
    "nullattrs",  # before noattributes and nullfields, which take the attributes away
    "noattributes",
    "nullfields",
    "bare",
    "notobject",
    "noid",
    "otherid",
    "nocreatedat",
)
"""Body-shape tokens, in the order they are applied."""

_BIG = re.compile(r"big(chunked)?(\d+)")


@dataclass(frozen=True, slots=True)
class Window:
    """A fault value for the first ``times`` requests, or for all when ``times`` is None."""

    value: int
    times: int | None = None

    def hits(self, attempt: int) -> bool:
        """Whether the 1-based ``attempt`` falls inside the window."""
        return self.times is None or attempt <= self.times


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """A Retry-After header to attach to injected error answers."""

    seconds: int
    http_date: bool = False


@dataclass(frozen=True, slots=True)
class SideFaults:
    """Faults for one server side (the FunnelFox API or the webhook receiver)."""

    status: Window | None = None
    retry_after: RetryAfter | None = None
    slow_ms: Window | None = None
    drop: Window | None = None

    @property
    def active(self) -> bool:
        """Whether any per-attempt fault is set, so the hot path can skip the checks."""
        return bool(self.status or self.slow_ms or self.drop)


@dataclass(frozen=True, slots=True)
class Faults:
    """Every directive found in one session id."""

    api: SideFaults = SideFaults()
    hook: SideFaults = SideFaults()
    not_json: bool = False
    invalid: bool = False
    anon: bool = False
    extra: bool = False
    shapes: tuple[str, ...] = ()  # among SHAPES, in SHAPES order
    big_kib: int | None = None  # pad the 200 body to this size
    chunked: bool = False  # stream it without Content-Length


_NO_FAULTS = Faults()


@dataclass(frozen=True, slots=True)
class FunnelFaults:
    """List-endpoint faults found in one funnel id."""

    repeat_cursor: bool = False
    page_error: Window | None = None


def _times(group: str | None) -> int | None:
    return int(group) if group is not None else None


@dataclass(frozen=True, slots=True)
class _Grammar:
    """The token patterns of one side; the receiver's are the API's with an ``h`` in front."""

    status: re.Pattern[str]
    retry_after: re.Pattern[str]
    slow: re.Pattern[str]
    drop: re.Pattern[str]

    @classmethod
    def with_prefix(cls, prefix: str, status_mark: str) -> _Grammar:
        """Build the patterns for tokens starting with ``prefix``."""
        return cls(
            status=re.compile(prefix + status_mark + r"(\d{3})" + _TIMES),
            retry_after=re.compile(prefix + r"ra(d?)(\d+)"),
            slow=re.compile(prefix + r"slow(\d+)" + _TIMES),
            drop=re.compile(prefix + r"drop" + _TIMES),
        )

    def parse(self, tokens: list[str]) -> SideFaults:
        """Collect this side's directives; a later token of the same kind wins."""
        status = slow_ms = drop = None
        retry_after = None
        for token in tokens:
            if m := self.status.fullmatch(token):
                status = Window(int(m[1]), _times(m[2]))
            elif m := self.retry_after.fullmatch(token):
                retry_after = RetryAfter(int(m[2]), http_date=bool(m[1]))
            elif m := self.slow.fullmatch(token):
                slow_ms = Window(int(m[1]), _times(m[2]))
            elif m := self.drop.fullmatch(token):
                drop = Window(0, _times(m[1]))
        return SideFaults(status=status, retry_after=retry_after, slow_ms=slow_ms, drop=drop)


_API = _Grammar.with_prefix("", "s")
_HOOK = _Grammar.with_prefix("h", "")


@lru_cache(maxsize=100_000)
def parse_faults(session_id: str) -> Faults:
    """Parse the directives of a session id (cached: the simulators call this per request)."""
    if "-" not in session_id:
        return _NO_FAULTS
    tokens = session_id.split("-")
    flags = _FLAGS.intersection(tokens)
    big = next((m for t in tokens if (m := _BIG.fullmatch(t))), None)
    return Faults(
        api=_API.parse(tokens),
        hook=_HOOK.parse(tokens),
        not_json="notjson" in flags,
        invalid="invalid" in flags,
        anon="anon" in flags,
        extra="extra" in flags,
        shapes=tuple(shape for shape in SHAPES if shape in tokens),
        big_kib=int(big[2]) if big else None,
        chunked=bool(big and big[1]),
    )


@lru_cache(maxsize=1_024)
def parse_funnel_faults(funnel_id: str) -> FunnelFaults:
    """Parse the list-endpoint directives of a funnel id."""
    repeat_cursor = False
    page_error: Window | None = None
    for part in funnel_id.split("-"):
        if part == "repeatcursor":
            repeat_cursor = True
        elif m := _PAGE_ERROR.fullmatch(part):
            page_error = Window(503, _times(m[1]))
    return FunnelFaults(repeat_cursor=repeat_cursor, page_error=page_error)
