"""``python -m worker.schema [payload]``: print a payload JSON Schema (published in ``schemas/``).

With no argument, ``session.enriched``'s (``schemas/session.enriched.schema.json``); with
``payload``, the schema of every type delivered (``schemas/payload.schema.json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.payload import payload_json_schema, session_enriched_json_schema

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
PUBLISHED = SCHEMAS / "session.enriched.schema.json"
PUBLISHED_EVERY_TYPE = SCHEMAS / "payload.schema.json"
_SOURCES: dict[str, Callable[[], dict[str, Any]]] = {
    "session.enriched": session_enriched_json_schema,
    "payload": payload_json_schema,
}


def render(name: str = "session.enriched") -> str:
    """A schema as it is published: sorted keys, two-space indent, a final newline."""
    return json.dumps(_SOURCES[name](), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(*sys.argv[1:2]), end="")
