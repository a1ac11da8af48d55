"""DESTINATIONS_FILE: the TOML format, ${VAR}, filters, and errors that name file, destination
and field (never a secret's value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.destinations import (
    KINDS,
    DestinationError,
    Filters,
    StreamDestination,
    WebhookDestination,
    load_destinations_file,
)
from config.settings import ConfigError, load_settings

KEY_NEW = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY_OLD = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

HOOK = '[[destinations]]\nname = "h"\ntype = "webhook"\n'
FOUR = """
[[destinations]]
name = "crm"
type = "webhook"
url = "https://user:pw@crm.example.com/hooks/funnelfox?token=x"
secrets = ["${CRM_KEY_NEW}", "${CRM_KEY_OLD}"]
funnel_ids = ["fun_a"]
timeout_s = 3
rate_limit_per_s = 50

[[destinations]]
name = "all"
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "${CRM_KEY_NEW}"

[[destinations]]
name = "warehouse"
type = "redis_stream"
stream = "funnelfox:enriched"
maxlen = 500
event_types = ["purchase.completed"]
sandbox = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    return path


def test_a_file_with_several_kinds_filters_and_keys(tmp_path: Path) -> None:
    env = {"CRM_KEY_NEW": KEY_NEW, "CRM_KEY_OLD": KEY_OLD}
    crm, every, warehouse = load_destinations_file(write(tmp_path, FOUR), env)

    assert isinstance(crm, WebhookDestination)
    assert [s.get_secret_value() for s in crm.secrets] == [KEY_NEW, KEY_OLD]
    assert crm.timeout_s == 3
    assert crm.rate_limit_per_s == 50
    assert crm.target() == "https://crm.example.com/hooks/funnelfox"  # no credentials
    assert isinstance(every, WebhookDestination)
    assert len(every.secrets) == 1
    assert isinstance(warehouse, StreamDestination)
    assert (warehouse.stream, warehouse.maxlen, warehouse.redis_url) == (
        "funnelfox:enriched",
        500,
        None,
    )
    assert crm.filters.take("fun_a", None, None)
    assert not crm.filters.take("fun_b", None, None)
    assert warehouse.filters.take(None, "purchase.completed", False)
    assert not warehouse.filters.take(None, "onboarding.completed", False)
    assert not warehouse.filters.take(None, "purchase.completed", True)
    assert every.filters == Filters()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[destinations]]\nname = "x"\ntype = "sms"\n', "destination 'x', type: unknown type"),
        (
            '[[destinations]]\nname = "x"\ntype = "redis_stream"\nstream = "s"\ncolour = "red"\n',
            "destination 'x', colour: Extra inputs are not permitted",
        ),
        (
            '[[destinations]]\nname = "Bad Name"\ntype = "redis_stream"\nstream = "s"\n',
            "destination 'Bad Name', name:",
        ),
        (
            '[[destinations]]\nname = "h"\ntype = "webhook"\nurl = "ftp://x"\nsecret = "${K}"\n',
            "destination 'h', url: must start with http",
        ),
        (
            HOOK + 'url = "http://x"\nsecret = "nope-secret"\n',
            "destination 'h', secrets: must start with 'whsec_'",
        ),
        (
            HOOK + 'url = "http://x"\nsecret = "${MISSING}"\n',
            "destination 'h'.secret: environment variable MISSING is not set",
        ),
        (HOOK + 'url = "http://"\nsecret = "${K}"\n', "destination 'h', url: names no host"),
        (
            HOOK + 'url = "https://exa mple.com/x y"\nsecret = "${K}"\n',
            "destination 'h', url: must not contain spaces",
        ),
        (
            HOOK + 'url = "https://example.com:99999/x"\nsecret = "${K}"\n',
            "destination 'h', url: has a port that is not a number from 1 to 65535",
        ),
        (
            HOOK + 'url = "https://example.com:0/x"\nsecret = "${K}"\n',
            "destination 'h', url: has a port that is not a number from 1 to 65535",
        ),
        (
            '[[destinations]]\nname = "w"\ntype = "redis_stream"\nstream = "s"\n'
            'redis_url = "garbage"\n',
            "destination 'w', redis_url: must start with redis://",
        ),
        (
            '[[destinations]]\nname = "w"\ntype = "redis_stream"\nstream = "s"\n'
            'redis_url = "redis://:nope-secret@/0"\n',
            "destination 'w', redis_url: names no host",
        ),
        ("[[destinations]\n", "not valid TOML"),
    ],
)
def test_a_bad_file_names_file_destination_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DestinationError) as caught:
        load_destinations_file(path, {"K": KEY_NEW})
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)
    assert "nope-secret" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://", "https://exa mple.com/x", "https://h:99999/"])
def test_a_bad_webhook_url_shorthand_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("WEBHOOK_URL", url)
    monkeypatch.setenv("WEBHOOK_SECRET", KEY_NEW)
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        load_settings()


def test_names_are_unique_across_the_file_and_the_shorthands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, '[[destinations]]\nname = "stream"\ntype = "redis_stream"\nstream = "s"\n'
    )
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    monkeypatch.setenv("DESTINATIONS_FILE", str(path))
    with pytest.raises(ConfigError, match="two destinations are named 'stream'") as caught:
        load_settings()
    assert f"DESTINATIONS_FILE {path}: destination 'stream', name: " in str(caught.value)


def test_a_name_twice_in_the_file_names_the_file_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = '[[destinations]]\nname = "dup"\ntype = "redis_stream"\nstream = "s"\n'
    path = write(tmp_path, table + table)
    monkeypatch.setenv("DESTINATIONS_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"DESTINATIONS_FILE {path}: destination 'dup', name: ")


def test_the_shorthands_and_a_file_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, FOUR)
    for name, value in {
        "WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "WEBHOOK_SECRET": f"{KEY_NEW} {KEY_OLD}",  # two keys: a rotation in progress
        "OUTPUT_STREAM": "enriched",
        "DESTINATIONS_FILE": str(path),
        "CRM_KEY_NEW": KEY_NEW,
        "CRM_KEY_OLD": KEY_OLD,
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.enabled_sinks == ["webhook", "stream", "crm", "all", "warehouse"]
    webhook = settings.destinations[0]
    assert isinstance(webhook, WebhookDestination)
    assert len(webhook.secrets) == 2
    assert settings.slowest_delivery_s == 10  # WEBHOOK_TIMEOUT_S beats crm's 3 s


def test_a_destinations_file_alone_is_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WEBHOOK_URL", "WEBHOOK_SECRET", "OUTPUT_STREAM"):
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path, '[[destinations]]\nname = "w"\ntype = "redis_stream"\nstream = "s"\n')
    monkeypatch.setenv("DESTINATIONS_FILE", str(path))
    assert load_settings().enabled_sinks == ["w"]


def test_every_destination_kind_has_a_sink_and_every_sink_a_kind() -> None:
    """The Destination union and worker.sinks.registry are the two places a kind is named."""
    from worker.sinks.registry import SINK_KINDS

    assert set(KINDS) == set(SINK_KINDS) == {"webhook", "redis_stream"}


def test_an_unknown_type_lists_the_kinds_there_are(tmp_path: Path) -> None:
    path = write(tmp_path, '[[destinations]]\nname = "x"\ntype = "sms"\n')
    with pytest.raises(DestinationError, match="must be webhook or redis_stream"):
        load_destinations_file(path, {})


def test_the_slowest_delivery_is_any_destinations_longest_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WEBHOOK_URL", "WEBHOOK_SECRET", "OUTPUT_STREAM", "WEBHOOK_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path, FOUR.replace("timeout_s = 3", "timeout_s = 42"))
    monkeypatch.setenv("DESTINATIONS_FILE", str(path))
    monkeypatch.setenv("CRM_KEY_NEW", KEY_NEW)
    monkeypatch.setenv("CRM_KEY_OLD", KEY_OLD)
    assert load_settings().slowest_delivery_s == 42


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@ss@host/x", "https://host/x"),  # a password holding '@'
        ("https://u:pw@host:8443/a/b?token=t0k#frag", "https://host:8443/a/b"),
        ("http://[::1]:8080/hook#section", "http://[::1]:8080/hook"),
    ],
)
def test_a_webhook_target_shows_scheme_host_port_and_path_only(url: str, shown: str) -> None:
    destination = WebhookDestination(name="h", url=url, secrets=[KEY_NEW])
    assert destination.target() == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@ss@analytics:6379/0?x=1", "redis://analytics:6379/0 s"),
        ("sentinel://:pw@s1:26379,s2/2?master=m", "sentinel://s1:26379,s2/2 s"),
    ],
)
def test_a_stream_target_shows_its_redis_without_credentials(url: str, shown: str) -> None:
    assert StreamDestination(name="w", stream="s", redis_url=url).target() == shown
