"""Secrets are masked wherever a message could carry them."""

from __future__ import annotations

from pydantic import SecretStr

from worker.redact import MASK, make_scrubber, url_secrets


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
