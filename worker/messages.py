"""Task arguments as they arrive, from our producers or anyone's, read without trusting them.

A foreign producer may send anything under our task names. Nothing here raises: what cannot be
a session becomes a refusal the pipeline dead-letters with a reason, so no id that arrived is
dropped unseen and no malformed message is retried forever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from worker.conversions import Conversion, InvalidConversion
from worker.errors import InvalidSessionId
from worker.ids import check_session_id
from worker.trigger import Trigger
from worker.work import Work

log = logging.getLogger("worker.messages")

RAW_MAX_CHARS = 2000
ID_MAX_CHARS = 256


@dataclass(frozen=True)
class Refusal:
    """Something in a message that cannot be worked on, and why."""

    session_id: str  # the unit's id
    reason: str  # invalid_id, invalid_trigger, invalid_message
    error: str
    trigger: dict[str, Any] | None = None
    event: Conversion | None = None


@dataclass
class Parsed:
    """The sessions of one message that can go on, and what was refused."""

    works: list[Work] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def bounded(value: Any, limit: int = RAW_MAX_CHARS) -> str:
    """A repr for a dead letter: never longer than ``limit``."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_trigger(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A trigger as the published schema has it: unknown or ill-typed keys dropped.

    Returns (trigger, problem); a value that is not an object is a problem.
    """
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, f"trigger must be an object, got {type(value).__name__}"
    known = {k: v for k, v in value.items() if k in Trigger.model_fields}
    try:
        return Trigger.model_validate(known).model_dump(mode="json"), None
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        kept = {k: v for k, v in known.items() if k not in bad}
        log.warning("trigger keys of the wrong type dropped: %s", ", ".join(sorted(bad)))
        return Trigger.model_validate(kept).model_dump(mode="json"), None


def read_session_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Parsed:
    """``enrich_session(session_id, trigger=None)`` as a foreign producer may send it."""
    parsed = Parsed()
    kwargs = dict(kwargs)
    session_id = args[0] if args else kwargs.pop("session_id", None)
    trigger_value = kwargs.pop("trigger", None)
    if len(args) > 1:
        log.warning("enrich_session: %d extra positional argument(s) ignored", len(args) - 1)
    if kwargs:
        log.warning("enrich_session: unknown keyword(s) ignored: %s", ", ".join(sorted(kwargs)))
    _add(parsed, {"id": session_id, "trigger": trigger_value}, missing="no session id given")
    return parsed


def read_batch_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Parsed:
    """``enrich_batch(items)``: a list of ``{id, first_seen_at?, attempts?, trigger?, event?}``
    (``event`` makes the item a conversion, ``id`` its event id)."""
    items = args[0] if args else kwargs.get("items")
    parsed = Parsed()
    if not isinstance(items, list):
        parsed.refused.append(
            Refusal("(message)", "invalid_message", f"items must be a list: {bounded(items)}")
        )
        return parsed
    for item in items:
        if isinstance(item, dict):
            _add(parsed, item, missing=f"an item without an id: {bounded(item)}")
        else:
            parsed.refused.append(
                Refusal(
                    "(message)",
                    "invalid_message",
                    f"an item that is not an object: {bounded(item)}",
                )
            )
    return parsed


def read_deliver_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, Parsed]:
    """``deliver(sink, items)``: the sink's name (None if unusable) and its items."""
    sink = args[0] if args else kwargs.get("sink")
    parsed = read_batch_call(args[1:], {"items": kwargs.get("items")} if len(args) < 2 else {})
    if not isinstance(sink, str):
        error = f"the destination's name must be a string: {bounded(sink)}"
        refused = [
            Refusal(w.session_id, "invalid_message", error, w.trigger, w.event)
            for w in parsed.works
        ]
        return None, Parsed(
            refused=[*refused, *parsed.refused] or [Refusal("(message)", "invalid_message", error)]
        )
    return sink, parsed


def _add(parsed: Parsed, item: dict[str, Any], *, missing: str) -> None:
    session_id = item.get("id")
    trigger, problem = read_trigger(item.get("trigger"))
    if session_id is None:
        parsed.refused.append(Refusal("(message)", "invalid_message", missing))
        return
    if not isinstance(session_id, str):
        error = f"a session id must be a string, got {type(session_id).__name__}"
        parsed.refused.append(Refusal(bounded(session_id, ID_MAX_CHARS), "invalid_id", error))
        return
    try:
        check_session_id(session_id)
    except InvalidSessionId as exc:
        parsed.refused.append(Refusal(session_id[:ID_MAX_CHARS], "invalid_id", str(exc), trigger))
        return
    if problem is not None:
        parsed.refused.append(Refusal(session_id, "invalid_trigger", problem))
        return
    try:
        event = None if item.get("event") is None else Conversion.from_message(item["event"])
    except InvalidConversion as exc:
        parsed.refused.append(Refusal(session_id, "invalid_message", str(exc), trigger))
        return
    payload = item.get("payload")
    parsed.works.append(
        Work(
            session_id=session_id,
            attempts=_number(item.get("attempts"), int, 0),
            first_seen_at=_number(item.get("first_seen_at"), float, time.time()),
            trigger=trigger,
            payload=payload.encode() if isinstance(payload, str) else None,
            event=event,
        )
    )


def _number(value: Any, kind: type[int] | type[float], default: int | float) -> Any:
    """A number from a number or a numeric string; the default otherwise."""
    if isinstance(value, bool):
        return default
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default
