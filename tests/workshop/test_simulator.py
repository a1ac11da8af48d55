"""The fake FunnelFox API and the webhook receiver, exercised over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from workshop.faults import SHAPES, RetryAfter, Window, parse_faults, parse_funnel_faults
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.sessions import EPOCH, OPTIONAL_FIELDS, make_session, session_body

SECRET = "secret_sim_test"
FUNNEL = "FUNNEL0000000000000000000A"
REPEAT = "FUNNEL-repeatcursor"
PAGE_ERR = "FUNNEL-pageerrx2"
REQUIRED = {
    "id",
    "attributes",
    "created_at",
    "funnel_id",
    "origin",
    "profile_id",
    "query_params",
    "replies",
    "user_agent",
}
ATTRIBUTES = {"city", "country", "ip", "postal_code", "region_code", "locale_code", "timezone"}


@pytest.fixture(scope="module")
def fox() -> Iterator[FunnelFoxSimulator]:
    with FunnelFoxSimulator(secret=SECRET, funnels={FUNNEL: 45, REPEAT: 30, PAGE_ERR: 30}) as sim:
        yield sim


@pytest.fixture
def api(fox: FunnelFoxSimulator) -> Iterator[httpx.Client]:
    fox.reset()
    fox.set_latency(0)
    with httpx.Client(base_url=fox.base_url, headers={"Fox-Secret": SECRET}) as client:
        yield client


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as recv:
        yield recv


@pytest.fixture
def hook(receiver: WebhookReceiver) -> Iterator[httpx.Client]:
    receiver.reset()
    with httpx.Client(base_url=receiver.url.removesuffix("/hook")) as client:
        yield client


def signed(
    session_id: str, msg_id: str = "msg_1", secret: str = DEMO_WEBHOOK_SECRET
) -> dict[str, Any]:
    """Request arguments for a delivery of ``session_id`` signed the Standard Webhooks way."""
    body = orjson.dumps({"type": "session.enriched", "data": {"session": {"id": session_id}}})
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, body.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return {"content": body, "headers": headers}


# -- sessions ------------------------------------------------------------------------------------


def test_sessions_have_the_openapi_shape() -> None:
    for i in range(200):
        session = make_session(f"ses_shape{i}")
        assert session.keys() >= REQUIRED
        assert session["id"] == f"ses_shape{i}"
        assert len(session["funnel_id"]) == 26
        assert session["profile_id"].startswith("pro_")
        assert len(session["profile_id"]) == 30
        assert isinstance(session["created_at"], int)
        assert EPOCH - 30 * 86400 <= session["created_at"] <= EPOCH
        assert session["origin"].startswith("https://")
        assert session["attributes"].keys() == ATTRIBUTES
        assert all(isinstance(v, str) for v in session["attributes"].values())
        assert len(session["attributes"]["country"]) == 2
        assert dict(parse_qsl(session["query"])) == session["query_params"]
        assert all(isinstance(v, str) for v in session["query_params"].values())
        for reply in session["replies"]:
            assert reply.keys() == {"screen_id", "element_id", "value"}
            value = reply["value"]
            assert isinstance(value, str | int) or all(isinstance(v, str) for v in value)


def test_sessions_vary_like_real_traffic() -> None:
    sessions = [make_session(f"ses_mix{i}") for i in range(400)]
    values = [r["value"] for s in sessions for r in s["replies"]]
    agents = " ".join(s["user_agent"] for s in sessions)
    params = {k for s in sessions for k in s["query_params"]}
    assert any(isinstance(v, list) for v in values)
    assert any(isinstance(v, int) for v in values)
    assert any(isinstance(v, str) and len(v) == 10 and v[4] == "-" == v[7] for v in values)
    for browser in ("iPhone", "Android", "iPad", "Windows NT", "Macintosh"):
        assert browser in agents
    for in_app_or_bot in ("Instagram", "FBAN", "FB_IAB", "musical_ly", "Googlebot"):
        assert in_app_or_bot in agents
    assert {"utm_source", "utm_campaign", "fbclid", "gclid", "ttclid"} <= params
    assert any(not s["query_params"] for s in sessions)
    assert {"São Paulo", "Zürich", "Kraków", "München"} <= {
        s["attributes"]["city"] for s in sessions
    }
    assert 0 < sum("experiment_id" in s for s in sessions) < len(sessions)
    assert 0 < sum("locale" in s for s in sessions) < len(sessions)
    mean = sum(len(session_body(f"ses_mix{i}")) for i in range(400)) / 400
    assert 1200 < mean < 2000


def test_sessions_are_deterministic() -> None:
    assert make_session("ses_same") == make_session("ses_same")
    assert orjson.loads(session_body("ses_same")) == make_session("ses_same")
    assert make_session("ses_same") != make_session("ses_other")


def test_anon_wipes_personal_fields_and_extra_adds_unknown_ones() -> None:
    anon = make_session("ses_x-anon")
    assert (anon["user_agent"], anon["replies"]) == ("", [])
    assert anon["attributes"]["ip"] == anon["attributes"]["postal_code"] == ""
    extra = make_session("ses_x-extra")
    assert "fox_extra_field" in extra
    assert set(extra["attributes"]) - ATTRIBUTES


# -- directive grammar ---------------------------------------------------------------------------


def test_directives_parse() -> None:
    faults = parse_faults("ses_abc-s500x2-ra7-slow50-dropx1-h410-hra3-hslow20x1-hdropx2-notjson")
    assert faults.api.status == Window(500, 2)
    assert faults.api.retry_after == RetryAfter(7)
    assert faults.api.slow_ms == Window(50, None)
    assert faults.api.drop == Window(0, 1)
    assert faults.hook.status == Window(410, None)
    assert faults.hook.retry_after == RetryAfter(3)
    assert faults.hook.slow_ms == Window(20, 1)
    assert faults.hook.drop == Window(0, 2)
    assert faults.not_json
    assert not faults.invalid
    assert parse_faults("ses_x-s429x1-rad30").api.retry_after == RetryAfter(30, http_date=True)
    assert not parse_faults("ses_plain").api.active
    assert not parse_faults("ses_x-unknown-s12-hx").api.active
    assert parse_funnel_faults("F-repeatcursor").repeat_cursor
    assert parse_funnel_faults("F-pageerrx3").page_error == Window(503, 3)
    # Body shapes, in SHAPES order whatever the id's order; other tokens do not count.
    assert parse_faults("ses_x-bare-s500x1-objreply").shapes == ("objreply", "bare")
    assert parse_faults("ses_x-nullfieldsx2-bareness").shapes == ()
    assert parse_faults("ses_plain").shapes == ()


# -- Get Session ---------------------------------------------------------------------------------


def test_get_session_answers_the_cached_body(api: httpx.Client, fox: FunnelFoxSimulator) -> None:
    response = api.get("/sessions/ses_plain")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == session_body("ses_plain")
    assert [status for _, status in fox.requests_for("ses_plain")] == [200]


def test_wrong_secret_is_401(api: httpx.Client, fox: FunnelFoxSimulator) -> None:
    response = api.get("/sessions/ses_plain", headers={"Fox-Secret": "secret_wrong"})
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert [status for _, status in fox.requests_for("ses_plain")] == [401]


@pytest.mark.parametrize("code", [500, 401, 408, 429, 524])
def test_status_fault_then_success(api: httpx.Client, fox: FunnelFoxSimulator, code: int) -> None:
    session_id = f"ses_f-s{code}x2"
    statuses = [api.get(f"/sessions/{session_id}").status_code for _ in range(3)]
    assert statuses == [code, code, 200]
    assert [status for _, status in fox.requests_for(session_id)] == statuses


def test_status_fault_without_count_is_permanent(api: httpx.Client) -> None:
    responses = [api.get("/sessions/ses_gone-s404") for _ in range(3)]
    assert [r.status_code for r in responses] == [404, 404, 404]
    assert responses[0].json() == {"message": "Not Found"}


def test_retry_after_in_seconds_and_as_http_date(api: httpx.Client) -> None:
    assert api.get("/sessions/ses_r-s503x1-ra7").headers["Retry-After"] == "7"
    header = api.get("/sessions/ses_r-s429x1-rad30").headers["Retry-After"]
    ahead = parsedate_to_datetime(header).timestamp() - time.time()
    assert 27 <= ahead <= 31


def test_drop_closes_without_answer(api: httpx.Client, fox: FunnelFoxSimulator) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        api.get("/sessions/ses_d-dropx1")
    assert api.get("/sessions/ses_d-dropx1").status_code == 200
    assert [status for _, status in fox.requests_for("ses_d-dropx1")] == [0, 200]


def test_slow_and_global_latency(api: httpx.Client, fox: FunnelFoxSimulator) -> None:
    started = time.monotonic()
    api.get("/sessions/ses_s-slow150x1")
    first = time.monotonic() - started
    started = time.monotonic()
    api.get("/sessions/ses_s-slow150x1")
    second = time.monotonic() - started
    assert first >= 0.15 > second
    fox.set_latency(100)
    started = time.monotonic()
    api.get("/sessions/ses_plain")
    assert time.monotonic() - started >= 0.1


def test_notjson_and_invalid_bodies(api: httpx.Client) -> None:
    response = api.get("/sessions/ses_n-notjson")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    invalid = api.get("/sessions/ses_i-invalid").json()
    assert isinstance(invalid["created_at"], str)
    assert "replies" not in invalid


def _replies_end_with(value: object) -> Any:
    return lambda body: body["replies"][-1]["value"] == value and len(body["replies"]) > 1


# token → what the served body shows (the rest of the session is as usual)
SHAPE_CHECKS: dict[str, Any] = {
    "objreply": _replies_end_with({"value": 180, "unit": "cm"}),
    "boolreply": _replies_end_with(True),
    "nouseragent": lambda body: "user_agent" not in body and "attributes" in body,
    "noattributes": lambda body: "attributes" not in body and "user_agent" in body,
    "nullattrs": lambda body: (
        set(body["attributes"]) >= {"country", "city", "timezone", "locale_code"}
        and all(value is None for value in body["attributes"].values())
    ),
    "nullfields": lambda body: (
        all(body[k] is None for k in OPTIONAL_FIELDS) and isinstance(body["funnel_id"], str)
    ),
    "bare": lambda body: set(body) == {"id", "created_at"},
    "notobject": lambda body: isinstance(body, list) and body[0]["id"] == "ses_b-notobject",
    "noid": lambda body: "id" not in body and "created_at" in body,
    "otherid": lambda body: body["id"] != "ses_b-otherid",
    "nocreatedat": lambda body: "created_at" not in body and body["id"] == "ses_b-nocreatedat",
}


def test_every_shape_has_a_check() -> None:
    assert set(SHAPE_CHECKS) == set(SHAPES)


@pytest.mark.parametrize(("token", "check"), SHAPE_CHECKS.items())
def test_body_shapes_are_served(api: httpx.Client, token: str, check: Any) -> None:
    response = api.get(f"/sessions/ses_b-{token}")
    assert response.status_code == 200
    assert response.content == session_body(f"ses_b-{token}")
    assert check(response.json())


def test_control_api(api: httpx.Client, fox: FunnelFoxSimulator) -> None:
    api.get("/sessions/ses_c-s500x1")
    api.get("/sessions/ses_c-s500x1")
    root = fox.base_url.removesuffix(fox.prefix)
    stats = httpx.get(f"{root}/_sim/stats").json()
    assert [s for _, s in stats["requests"]["ses_c-s500x1"]] == [500, 200]
    assert httpx.post(f"{root}/_sim/config", json={"latency_ms": 5}).json()["latency_ms"] == 5
    assert fox.latency_ms == 5
    assert httpx.post(f"{root}/_sim/reset").status_code == 204
    assert fox.requests_for("ses_c-s500x1") == []
    # The fault counter was reset too: the first request fails again.
    assert api.get("/sessions/ses_c-s500x1").status_code == 500


# -- List Sessions -------------------------------------------------------------------------------


def _pages(api: httpx.Client, funnel_id: str, limit: int, max_pages: int) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"filter[funnel_id]": funnel_id, "limit": limit}
    for _ in range(max_pages):
        page = api.get("/sessions", params=params).json()
        pages.append(page)
        if not page["pagination"]["has_more"]:
            break
        params["cursor"] = page["pagination"]["next_cursor"]
    return pages


def test_list_paginates_newest_first(api: httpx.Client, fox: FunnelFoxSimulator) -> None:
    pages = _pages(api, FUNNEL, limit=20, max_pages=5)
    assert [len(p["data"]) for p in pages] == [20, 20, 5]
    assert {p["pagination"]["total"] for p in pages} == {45}
    assert pages[-1]["pagination"]["next_cursor"] is None
    rows = [row for p in pages for row in p["data"]]
    assert [row["id"] for row in rows] == fox.funnel_session_ids(FUNNEL)
    stamps = [row["created_at"] for row in rows]
    assert all(isinstance(s, str) and s.endswith("Z") for s in stamps)
    assert stamps == sorted(stamps, reverse=True)
    assert {row["funnel_id"] for row in rows} == {FUNNEL}
    # Get Session agrees with the list, with created_at back to Unix seconds.
    single = api.get(f"/sessions/{rows[0]['id']}").json()
    assert single["funnel_id"] == FUNNEL
    assert isinstance(single["created_at"], int)
    assert len(fox.list_requests()) == 3


def test_list_filters_by_profile(api: httpx.Client) -> None:
    profile = api.get("/sessions", params={"filter[funnel_id]": FUNNEL}).json()["data"][0]
    rows = api.get("/sessions", params={"filter[profile_id]": profile["profile_id"]}).json()
    assert rows["pagination"]["total"] == 2
    assert {r["profile_id"] for r in rows["data"]} == {profile["profile_id"]}


def test_list_repeatcursor_loops_on_page_two(api: httpx.Client) -> None:
    pages = _pages(api, REPEAT, limit=10, max_pages=4)
    cursors = [p["pagination"]["next_cursor"] for p in pages]
    assert len(pages) == 4
    assert cursors[0] == cursors[1] == cursors[2] == cursors[3]


def test_list_pageerr_fails_page_two_then_recovers(api: httpx.Client) -> None:
    params: dict[str, str | int] = {"filter[funnel_id]": PAGE_ERR, "limit": 10}
    params["cursor"] = api.get("/sessions", params=params).json()["pagination"]["next_cursor"]
    statuses = [api.get("/sessions", params=params).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_list_rejects_big_pages_and_bad_input(api: httpx.Client) -> None:
    assert api.get("/sessions", params={"limit": 101}).status_code == 408
    assert api.get("/sessions", params={"limit": 101}).json() == {"message": "Request Timeout"}
    assert api.get("/sessions", params={"limit": 0}).status_code == 400
    assert api.get("/sessions", params={"cursor": "!!"}).status_code == 400
    assert api.get("/sessions", headers={"Fox-Secret": "nope"}).status_code == 401


# -- webhook receiver ----------------------------------------------------------------------------


def test_receiver_accepts_a_signed_delivery(hook: httpx.Client, receiver: WebhookReceiver) -> None:
    response = hook.post("/hook", **signed("ses_ok", "msg_ok"))
    assert response.status_code == 204
    [delivery] = receiver.deliveries()
    assert (delivery.session_id, delivery.webhook_id, delivery.verified) == (
        "ses_ok",
        "msg_ok",
        True,
    )
    assert delivery.payload["data"]["session"]["id"] == "ses_ok"
    listed = hook.get("/_recv/deliveries").json()
    assert listed == [{"webhook_id": "msg_ok", "session_id": "ses_ok", "body": delivery.payload}]


def test_receiver_rejects_a_bad_signature(hook: httpx.Client, receiver: WebhookReceiver) -> None:
    other = "whsec_" + "A" * 43
    assert hook.post("/hook", **signed("ses_bad", "msg_bad", secret=other)).status_code == 400
    assert hook.post("/hook/sub", content=b"{}").status_code == 400
    assert receiver.deliveries() == []
    assert [a.verified for a in receiver.attempts()] == [False, False]
    assert hook.get("/_recv/attempts").json()[0]["status"] == 400


def test_receiver_status_directives(hook: httpx.Client, receiver: WebhookReceiver) -> None:
    statuses = [hook.post("/hook", **signed("ses_h-h500x2")).status_code for _ in range(3)]
    assert statuses == [500, 500, 204]
    assert [a.status for a in receiver.attempts_for("ses_h-h500x2")] == statuses
    assert [hook.post("/hook", **signed("ses_h-h410")).status_code for _ in range(2)] == [410, 410]
    moved = hook.post("/hook", **signed("ses_h-h302"))
    assert (moved.status_code, moved.headers["Location"]) == (302, "/moved")
    limited = hook.post("/hook", **signed("ses_h-h429x1-hra5"))
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "5")


def test_receiver_drop_and_slow(hook: httpx.Client, receiver: WebhookReceiver) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        hook.post("/hook", **signed("ses_h-hdropx1"))
    assert hook.post("/hook", **signed("ses_h-hdropx1")).status_code == 204
    started = time.monotonic()
    hook.post("/hook", **signed("ses_h-hslow120x1"))
    assert time.monotonic() - started >= 0.12


def test_wait_for_blocks_until_deliveries_arrive(
    hook: httpx.Client, receiver: WebhookReceiver
) -> None:
    assert receiver.wait_for(1, timeout=0.05) is False
    seen: list[str] = []
    receiver.on_attempt = lambda attempt: seen.append(attempt.webhook_id)

    def deliver() -> None:
        with httpx.Client() as client:
            for i in range(3):
                client.post(receiver.url, **signed(f"ses_w{i}", f"msg_w{i % 2}"))

    try:
        sender = threading.Thread(target=deliver)
        sender.start()
        assert receiver.wait_for(3, timeout=5)
        assert receiver.wait_for(2, timeout=5, distinct=True)
        sender.join(5)
    finally:
        receiver.on_attempt = None
    assert seen == ["msg_w0", "msg_w1", "msg_w0"]
    assert hook.get("/_recv/wait", params={"count": 3, "timeout": 1}).json() == {
        "count": 3,
        "reached": True,
    }


def test_http_wait_long_polls(hook: httpx.Client, receiver: WebhookReceiver) -> None:
    timer = threading.Timer(0.05, lambda: httpx.post(receiver.url, **signed("ses_lp", "msg_lp")))
    timer.start()
    answer = hook.get("/_recv/wait", params={"count": 1, "timeout": 5}).json()
    timer.join()
    assert answer == {"count": 1, "reached": True}
    missed = hook.get("/_recv/wait", params={"count": 5, "timeout": 0.05}).json()
    assert missed == {"count": 1, "reached": False}
