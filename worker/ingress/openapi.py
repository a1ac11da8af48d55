"""``python -m worker.ingress.openapi``: print the ingress's OpenAPI document (in ``schemas/``).

Built from the Event model, so the served document, the published file and the validation the
app does cannot drift apart silently: a test compares all three.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.ingress.events import Event

PUBLISHED = Path(__file__).resolve().parents[2] / "schemas" / "ingress.openapi.json"
VERSION = "1.0.0"

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}


def _status(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def _answer(status: dict[str, Any], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "status": status,
            "event_id": {"type": "string"},
            "type": {"type": "string"},
            "session_id": {
                "type": ["string", "null"],
                "description": "The event's session; null for a conversion that names none.",
            },
            "reason": {"type": "string"},
        },
        "required": ["status", "event_id", "type", *required],
    }


def _schemas() -> dict[str, Any]:
    problem = {
        "type": "object",
        "properties": {
            "loc": {"type": "array", "items": {"type": "string"}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
        "required": ["loc", "msg", "type"],
    }
    return {
        "FunnelFoxEvent": Event.model_json_schema(ref_template=_REF),
        "Enqueued": _answer(_status("enqueued"), required=("session_id",)),
        "Acknowledged": _answer(_status("duplicate", "ignored")),
        "Problem": problem,
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "problems": {"type": "array", "items": _ref("Problem")},
            },
            "required": ["error", "message"],
        },
        "Status": {
            "type": "object",
            "properties": {"status": {"type": "string"}},
            "required": ["status"],
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves."""
    webhook = {
        "summary": "Receive a FunnelFox webhook event",
        "description": (
            "Authenticated by the project secret in `Fox-Secret-Key` (or the older "
            "`Fox-Secret`). Events of the configured types (INGRESS_EVENT_TYPES) are queued "
            "for enrichment and answered 202 once the task is in the broker; others are "
            "answered 200 and dropped. Purchase and subscription events (conversions) are "
            "queued whether or not they name a session (the envelope's `session_id`, else "
            "`data.session_id`, else `profile.session_id`). An event id already queued is "
            "answered 200 `duplicate` and not queued again."
        ),
        "operationId": "receiveFunnelFoxEvent",
        "security": [{"FoxSecretKey": []}, {"FoxSecret": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("FunnelFoxEvent")}},
        },
        "responses": {
            "200": _json(
                "Acknowledged without queueing: a duplicate or ignored event.", "Acknowledged"
            ),
            "202": _json("Queued for enrichment.", "Enqueued"),
            "400": _json("The body is not JSON.", "Error"),
            "401": _json("Missing or wrong secret; nothing was queued.", "Error"),
            "409": _json(
                "Another request is queueing this event right now; retry.", "Error", _RETRY_AFTER
            ),
            "413": _json("The body is over INGRESS_MAX_BODY_BYTES.", "Error"),
            "422": _json("The JSON is not an event, or its session id is invalid.", "Error"),
            "503": _json(
                "The broker is unreachable and nothing was queued (`broker_unavailable`), or "
                "the event is queued but fewer than REDIS_WAIT_REPLICAS replicas confirmed it "
                "in time (`not_replicated`); retry.",
                "Error",
                _RETRY_AFTER,
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "funnelfox-enricher ingress",
            "version": VERSION,
            "description": "Receives FunnelFox webhooks and queues their sessions for enrichment.",
        },
        "paths": {
            "/webhooks/funnelfox": {"post": webhook},
            "/healthz": {
                "get": {
                    "summary": "The process is alive",
                    "operationId": "healthz",
                    "responses": {"200": _json("Alive.", "Status")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Redis (the broker) is reachable",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json("Ready.", "Status"),
                        "503": _json("Redis did not answer.", "Error"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Pipeline metrics of the whole fleet, in Prometheus text format",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "503": _json("Redis did not answer.", "Error"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "FoxSecretKey": {"type": "apiKey", "in": "header", "name": "Fox-Secret-Key"},
                "FoxSecret": {"type": "apiKey", "in": "header", "name": "Fox-Secret"},
            },
        },
    }


def render() -> str:
    """The document as it is published: sorted keys, two-space indent, a final newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
