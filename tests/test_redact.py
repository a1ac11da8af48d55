"""Secrets are masked wherever a message could carry them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from config import load_settings
from config.sensitive import url_secrets
from worker.redact import MASK, make_scrubber
from worker.runtime import scrubber


def test_known_secrets_and_url_credentials_are_masked() -> None:
    scrub = make_scrubber(
        [
            SecretStr("secret_abc123"),
            SecretStr("whsec_QUJDREVGR0g="),
            None,
            *url_secrets("https://hooks.example/in?token=t0ps3cret"),
        ]
    )
    text = (
        "Fox-Secret secret_abc123 failed; key QUJDREVGR0g= and whsec_QUJDREVGR0g=; "
        "POST https://hooks.example/in?token=t0ps3cret; redis://user:pa55@host:6379/0"
    )
    cleaned = scrub(text)
    for leaked in ("secret_abc123", "QUJDREVGR0g=", "t0ps3cret", "pa55"):
        assert leaked not in cleaned
    assert cleaned.count(MASK) >= 5


def test_text_without_secrets_is_unchanged() -> None:
    assert make_scrubber([SecretStr("secret_x1")])("nothing here") == "nothing here"


def test_a_destination_files_keys_and_url_credentials_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's scrubber knows every destination, not only the shorthand variables'."""
    key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    path = tmp_path / "destinations.toml"
    path.write_text(
        "[[destinations]]\n"
        'name = "crm"\ntype = "webhook"\n'
        'url = "https://crm.example.com/hook?token=crm-t0ken"\n'
        f'secret = "{key}"\n'
        "[[destinations]]\n"
        'name = "warehouse"\ntype = "redis_stream"\nstream = "s"\n'
        'redis_url = "redis://:warehouse-pw@127.0.0.1:1/0"\n'
    )
    for name in list(os.environ):
        if name.startswith(("WEBHOOK_", "OUTPUT_", "FUNNELFOX_", "DESTINATIONS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("DESTINATIONS_FILE", str(path))

    line = scrubber(load_settings())(
        f"crm: POST https://crm.example.com/hook?token=crm-t0ken signed with {key}; "
        "warehouse: AUTH warehouse-pw refused"
    )

    for leaked in ("crm-t0ken", key, key.removeprefix("whsec_"), "warehouse-pw"):
        assert leaked not in line
    assert "https://crm.example.com/hook?***" in line
