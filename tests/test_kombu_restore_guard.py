"""The kombu restore guard: applied on the versions it was verified against, and what it does."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import redis.exceptions
from kombu.transport import redis as kombu_redis

from worker import kombu_restore_guard as guard


@pytest.fixture
def unpatched() -> object:
    before = kombu_redis.Channel._connparams
    kombu_redis.Channel._connparams = guard._original_connparams
    yield
    kombu_redis.Channel._connparams = before


@pytest.mark.usefixtures("unpatched")
def test_a_closed_connection_raises_what_kombu_retries_not_attribute_error() -> None:
    channel = SimpleNamespace(connection=SimpleNamespace(client=None))
    # Unguarded, kombu reads None.hostname: the crash the guard exists for.
    with pytest.raises(AttributeError):
        kombu_redis.Channel._connparams(channel)
    assert guard.install("5.7.0")
    with pytest.raises(redis.exceptions.ConnectionError):
        kombu_redis.Channel._connparams(channel)


@pytest.mark.usefixtures("unpatched")
def test_another_kombu_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert not guard.install("6.0.0")
    assert kombu_redis.Channel._connparams is guard._original_connparams
    assert "outside the versions" in caplog.text


def test_the_installed_kombu_is_one_it_was_verified_against() -> None:
    """When an upgrade moves kombu out of the range, this fails: re-verify, then widen."""
    import kombu

    assert guard.applies_to(kombu.__version__)
