"""REDIS_URL: the plain forms and the Sentinel form, parsed once, errors in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from processes import lacking_database

from config import ConfigError, load_settings
from config.redis_url import SentinelURL, check_redis_url, parse_sentinel_url
from config.sensitive import url_secrets
from worker.celeryconfig import celery_config
from worker.producer import producer_config
from worker.redact import make_scrubber
from worker.redis_clients import kombu_broker, require_reachable

PASSWORD = "s3cr:et@pw"
SENTINEL_PASSWORD = "sentinel-only-pw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("REDIS_", "WEBHOOK_", "OUTPUT_", "FUNNELFOX_", "INGRESS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")


def test_a_plain_url_is_not_a_sentinel_url() -> None:
    for url in ("redis://localhost:6379/0", "rediss://h:6380/1", "unix:///tmp/r.sock?db=2"):
        check_redis_url(url)
        assert parse_sentinel_url(url) is None


def test_the_sentinel_form() -> None:
    url = "sentinel://:pw@s1:26379,s2:26380,s3/2?master=mymaster"
    check_redis_url(url)
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=(("s1", 26379), ("s2", 26380), ("s3", 26379)),
        master="mymaster",
        db=2,
        password="pw",
    )


def test_credentials_are_decoded_and_kept_out_of_the_repr() -> None:
    quoted = "s3cr%3Aet%40pw"
    url = f"sentinel://ops:{quoted}@[::1]:26379,s2/0?master=m&sentinel_password={SENTINEL_PASSWORD}"
    parsed = parse_sentinel_url(url)
    assert parsed is not None
    assert (parsed.username, parsed.password) == ("ops", PASSWORD)
    assert parsed.sentinel_password == SENTINEL_PASSWORD
    assert parsed.sentinels == (("::1", 26379), ("s2", 26379))
    assert PASSWORD not in repr(parsed)
    assert SENTINEL_PASSWORD not in repr(parsed)
    assert parsed.kombu_url() == (
        f"sentinel://ops:{quoted}@[::1]:26379/0;sentinel://ops:{quoted}@s2:26379/0"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sentinel://s1:26379,s2:26379/0", "names no primary: add ?master="),
        ("sentinel://s1:26379/0?master=", "names no primary"),
        ("sentinel://s1:26379,,s2:26379/0?master=m", "empty or malformed Sentinel"),
        ("sentinel://:pw@/0?master=m", "empty or malformed Sentinel"),
        ("sentinel://s1:port/0?master=m", "Sentinel port that is not a number"),
        ("sentinel://s1:70000/0?master=m", "Sentinel port that is not a number"),
        ("sentinel://s1/x?master=m", "database index that is not a whole number ('x')"),
        ("sentinel://s1/99999?master=m", "database index out of range (99999): at most 65535"),
        ("redis://h:6379/99999", "database index out of range (99999): at most 65535"),
        ("redis://h:6379/\u00b2", "database index that is not a whole number"),
        ("unix:///tmp/r.sock?db=70000", "database index out of range (70000)"),
        ("sentinel://s1;sentinel://s2/0?master=m", "separate Sentinels with commas"),
        ("sentinel://s1/0?master=m&pasword=pw", "unknown option(s) pasword"),
        (
            "sentinels://s1/0?master=m",
            "must start with redis://, rediss://, unix:// or sentinel://",
        ),
    ],
)
def test_a_malformed_url_is_named_in_one_line_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    url = url.replace("pw", PASSWORD.replace(":", "%3A").replace("@", "%40"))
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration: REDIS_URL: ")
    assert problem in message
    assert "\n" not in message
    assert "s3cr" not in message


def test_a_database_the_server_lacks_is_a_refusal_not_an_absent_server(
    redis_server_url: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        require_reachable(lacking_database(redis_server_url), timeout_s=2)
    assert str(caught.value) == (
        "REDIS_URL: Redis answered but refused: ResponseError: DB index is out of range"
    )


def test_a_login_the_server_refuses_is_a_refusal_without_the_password(
    redis_server_url: str,
) -> None:
    host = redis_server_url.split("://", 1)[1]
    with pytest.raises(ConfigError) as caught:
        require_reachable(f"redis://nobody-here:{SENTINEL_PASSWORD}@{host}", timeout_s=2)
    message = str(caught.value)
    assert message.startswith("REDIS_URL: Redis answered but refused: AuthenticationError: ")
    assert SENTINEL_PASSWORD not in message


def test_settings_take_a_sentinel_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "sentinel://s1,s2,s3/0?master=ffe"
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings().redis_url == url


def test_the_broker_gets_kombus_spelling_and_the_primarys_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "sentinel://:pw@s1,s2:26380/3?master=ffe")
    for config in (celery_config(load_settings()), producer_config(load_settings().redis_url, 1)):
        assert config["broker_url"] == "sentinel://:pw@s1:26379/3;sentinel://:pw@s2:26380/3"
        options = config["broker_transport_options"]
        assert options["master_name"] == "ffe"
        assert options["sentinel_kwargs"]["socket_connect_timeout"] > 0
        assert "password" not in options["sentinel_kwargs"]
        # Flower reads a worker's configuration as JSON (inspect conf).
        json.dumps(options)


def test_the_sentinels_own_password_goes_to_the_sentinels_only() -> None:
    url = f"sentinel://:pw@s1/0?master=ffe&sentinel_password={SENTINEL_PASSWORD}"
    broker_url, options = kombu_broker(url, connect_timeout_s=1)
    assert SENTINEL_PASSWORD not in broker_url
    assert options["sentinel_kwargs"]["password"] == SENTINEL_PASSWORD


def test_a_plain_url_reaches_kombu_unchanged() -> None:
    assert kombu_broker("redis://h:6379/4", connect_timeout_s=1) == ("redis://h:6379/4", {})


def test_every_password_in_a_sentinel_url_is_scrubbed() -> None:
    quoted = "s3cr%3Aet%40pw"
    url = f"sentinel://:{quoted}@s1/0?master=ffe&sentinel_password={SENTINEL_PASSWORD}"
    scrub = make_scrubber(url_secrets(url))
    text = f"auth failed with {PASSWORD}, sentinel {SENTINEL_PASSWORD}, url {url}"
    cleaned = scrub(text)
    assert "s3cr" not in cleaned
    assert SENTINEL_PASSWORD not in cleaned
    assert "ffe" in scrub("key ffe:dlq")


def test_waiting_for_replicas_must_fit_in_the_ingress_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from config.ingress import load_config

    monkeypatch.setenv("FUNNELFOX_SECRET", "fox-secret")
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("REDIS_WAIT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("INGRESS_BROKER_TIMEOUT_S", "0.5")
    with pytest.raises(ConfigError, match=r"REDIS_WAIT_TIMEOUT_S \(0.5\) must be below INGRESS_"):
        load_config()
    monkeypatch.setenv("REDIS_WAIT_TIMEOUT_S", "0.2")
    assert (load_config().wait_replicas, load_config().wait_timeout_s) == (1, 0.2)
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", "0")
    monkeypatch.setenv("REDIS_WAIT_TIMEOUT_S", "1")
    assert load_config().wait_replicas == 0
