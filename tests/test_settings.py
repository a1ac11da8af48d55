"""Settings: defaults, the environment, .env, and errors that name the variable to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from worker.celeryconfig import celery_config, check_worker_limits

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PREFIXES = (
    "FUNNELFOX_",
    "WEBHOOK_",
    "RETRY_",
    "OUTPUT_",
    "WORKER_",
    "REDIS_",
    "VISIBILITY_",
    "DEDUPE_",
    "LOG_",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of ours from the outside, and no .env in the working directory."""
    for name in list(os.environ):
        if name.startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_with_one_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    settings = load_settings()
    assert settings.funnelfox.api_url == "https://api.funnelfox.io/public/v1"
    assert settings.funnelfox.timeout_s == 10
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.webhook.url is None
    assert settings.output_stream == "enriched"
    assert (settings.retry.backoff_base_s, settings.retry.backoff_max_s) == (1, 300)
    assert settings.retry.max_attempts == 8
    assert settings.visibility_timeout_s == 3600
    assert settings.dedupe_ttl_s == 7 * 24 * 3600


def test_funnelfox_answers_are_capped_at_one_mib_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    assert load_settings().funnelfox.max_body_bytes == 1024 * 1024
    monkeypatch.setenv("FUNNELFOX_MAX_BODY_BYTES", "65536")
    assert load_settings().funnelfox.max_body_bytes == 65536


def test_no_sink_is_refused() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_URL or OUTPUT_STREAM"):
        load_settings()


def test_webhook_needs_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URL", "https://hooks.example/in")
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is required"):
        load_settings()


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("plainsecret", "must start with 'whsec_'"),
        ("whsec_!!!notbase64", "must be base64"),
        ("whsec_c2hvcnQ=", "at least 24 bytes"),
    ],
)
def test_bad_webhook_secret_is_named_not_echoed(
    monkeypatch: pytest.MonkeyPatch, secret: str, problem: str
) -> None:
    monkeypatch.setenv("WEBHOOK_URL", "https://hooks.example/in")
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "WEBHOOK_SECRET" in str(caught.value)
    assert problem in str(caught.value)
    assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FUNNELFOX_TIMEOUT_S", "-1"),
        ("FUNNELFOX_API_URL", "ftp://example"),
        ("WORKER_CONCURRENCY", "many"),
        ("RETRY_MAX_ATTEMPTS", "0"),
        ("FUNNELFOX_MAX_BODY_BYTES", "100"),
    ],
)
def test_invalid_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_dotenv_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "OUTPUT_STREAM=from-dotenv\nFUNNELFOX_TIMEOUT_S=3\nWEBHOOK_URL=http://a/\n"
        f"WEBHOOK_SECRET={WHSEC}\n"
    )
    monkeypatch.setenv("FUNNELFOX_TIMEOUT_S", "4")
    settings = load_settings()
    assert settings.output_stream == "from-dotenv"
    assert settings.funnelfox.timeout_s == 4
    assert settings.webhook.url == "http://a/"


def test_secrets_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URL", "https://hooks.example/in")
    monkeypatch.setenv("WEBHOOK_SECRET", WHSEC)
    monkeypatch.setenv("FUNNELFOX_SECRET", "secret_topsecretvalue")
    settings = load_settings()
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    assert WHSEC not in shown
    assert "secret_topsecretvalue" not in shown


def test_worker_needs_the_funnelfox_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    with pytest.raises(ConfigError, match="FUNNELFOX_SECRET"):
        check_worker_limits(load_settings())


def test_retry_delays_above_the_visibility_timeout_are_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retries wait in the ledger, not in the broker: no delay can be redelivered early."""
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    monkeypatch.setenv("FUNNELFOX_SECRET", "secret_x")
    monkeypatch.setenv("VISIBILITY_TIMEOUT_S", "200")
    monkeypatch.setenv("RETRY_SCHEDULE_S", "5,300,36000")
    check_worker_limits(load_settings())


def test_the_retry_schedule_and_its_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.runtime import retry_policy

    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    default = retry_policy(load_settings())
    assert default.schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert default.max_attempts == 8
    monkeypatch.setenv("RETRY_SCHEDULE_S", "1, 2,3")
    assert retry_policy(load_settings()).schedule == (1, 2, 3)
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "4")  # any RETRY_BACKOFF_* / MAX_ATTEMPTS wins
    exponential = retry_policy(load_settings())
    assert (exponential.schedule, exponential.max_attempts, exponential.base_s) == ((), 4, 1.0)


@pytest.mark.parametrize("value", ["", "5,,300", "5,-1", "0", "five"])
def test_a_bad_retry_schedule_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    monkeypatch.setenv("RETRY_SCHEDULE_S", value)
    with pytest.raises(ConfigError, match="RETRY_SCHEDULE_S"):
        load_settings()


def test_worker_refuses_task_limits_longer_than_visibility(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    monkeypatch.setenv("FUNNELFOX_SECRET", "secret_x")
    monkeypatch.setenv("RETRY_BACKOFF_MAX_S", "10")
    monkeypatch.setenv("VISIBILITY_TIMEOUT_S", "30")
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT_S"):
        check_worker_limits(load_settings())


def test_celery_gets_the_visibility_timeout_and_at_least_once_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTPUT_STREAM", "enriched")
    monkeypatch.setenv("VISIBILITY_TIMEOUT_S", "1234")
    conf = celery_config(load_settings())
    assert conf["broker_transport_options"]["visibility_timeout"] == 1234
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["result_backend"] is None
    transport = conf["broker_transport_options"]
    # Abandoned messages are swept for every quarter of the visibility timeout (at most 10 s),
    # and a sweep's lock never outlives a sweep interval.
    assert transport["unacked_restore_interval"] == 10
    assert transport["unacked_restore_throttle"] == 1
    assert transport["unacked_mutex_expire"] <= transport["unacked_restore_interval"]
    # A dropped connection reaches kombu, which reconnects: redis-py retrying it underneath
    # hung the worker (tests/test_netfault.py).
    assert transport["retry_on_timeout"] is False
