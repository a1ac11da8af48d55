"""The retry policy: full jitter under a growing ceiling, Retry-After a floor, the cap over all."""

from __future__ import annotations

import random

import pytest

from worker.retry import RetryPolicy

POLICY = RetryPolicy(base_s=1.0, max_s=300.0, max_attempts=8)


@pytest.mark.parametrize(
    ("attempts", "ceiling"), [(1, 1), (2, 2), (3, 4), (5, 16), (9, 256), (10, 300), (30, 300)]
)
def test_delay_stays_under_a_ceiling_that_doubles_up_to_the_cap(
    attempts: int, ceiling: float
) -> None:
    rng = random.Random(7)
    delays = [POLICY.delay_s(attempts, rng=rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not a narrow band near the ceiling.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_backoff_grows_on_average() -> None:
    rng = random.Random(3)
    means = [sum(POLICY.delay_s(n, rng=rng) for _ in range(4000)) / 4000 for n in (1, 3, 5, 7)]
    assert means == sorted(means)
    assert means[-1] > 8 * means[0]


@pytest.mark.parametrize("retry_after", [0.0, 5.0, 120.0])
def test_retry_after_is_a_floor(retry_after: float) -> None:
    rng = random.Random(1)
    assert all(POLICY.delay_s(1, retry_after, rng) >= retry_after for _ in range(500))


def test_the_cap_bounds_retry_after_too() -> None:
    assert POLICY.delay_s(1, retry_after_s=10_000) == 300


def test_attempts_are_counted_in_all() -> None:
    assert [POLICY.can_retry(n) for n in (1, 7, 8, 9)] == [True, True, False, False]


def test_a_schedule_waits_each_delay_in_turn_within_ten_percent() -> None:
    policy = RetryPolicy.from_schedule((5.0, 300.0, 1800.0))
    rng = random.Random(7)
    for attempts, planned in ((1, 5.0), (2, 300.0), (3, 1800.0)):
        delays = [policy.delay_s(attempts, rng=rng) for _ in range(200)]
        assert min(delays) >= planned * 0.9
        assert max(delays) <= planned * 1.1
        assert max(delays) - min(delays) > planned * 0.1  # jittered, not fixed
    assert policy.can_retry(3)
    assert not policy.can_retry(4)  # len(schedule) + 1 attempts in all


def test_retry_after_is_a_floor_on_a_schedule_too() -> None:
    policy = RetryPolicy.from_schedule((5.0, 300.0))
    assert policy.delay_s(1, retry_after_s=120) == 120
    assert policy.delay_s(1, retry_after_s=10**6) == pytest.approx(330)  # longest + 10 %
