"""Log set-up: readable lines on a terminal, one JSON object a line with LOG_FORMAT=json.

Pipeline log calls carry their fields in ``extra`` (session_id, a conversion's event_id,
stage, attempt, outcome …);
both formats print them, so a line is useful without its message text.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# The fields this project's log calls pass in ``extra``; others (Celery's ``data`` dict with
# task arguments, for one) stay out of the line.
FIELDS = (
    "session_id",
    "event_id",
    "stage",
    "attempt",
    "outcome",
    "duration_s",
    "delay_s",
    "count",
    "error",
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class TextFormatter(logging.Formatter):
    """The usual line, with the record's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure_logging(log_format: str, level: str, *, client_ips: bool = False) -> None:
    """Install one stderr handler on the root logger; quiet the per-request library logs.

    uvicorn's access log names each client's IP address: it stays off unless the user opts
    in (LOG_CLIENT_IPS=true). No other line of this project carries an IP.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: at thousands a second that is the cost of the work.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = not client_ips
