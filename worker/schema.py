"""``python -m worker.schema``: print the payload's JSON Schema (published in ``schemas/``)."""

from __future__ import annotations

import json
from pathlib import Path

from worker.payload import payload_json_schema

PUBLISHED = Path(__file__).resolve().parent.parent / "schemas" / "session.enriched.schema.json"


def render() -> str:
    """The schema as it is published: sorted keys, two-space indent, a final newline."""
    return json.dumps(payload_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
