"""The fleet rate limit: reservations from one Redis key, never more than the rate allows."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from worker.ratelimit import FleetRateLimit


def test_reservations_space_slots_and_stop_at_the_wait_bound(redis_url: str) -> None:
    async def main() -> list[tuple[int, float]]:
        client = aioredis.Redis.from_url(redis_url)
        limit = FleetRateLimit(client, rate_per_s=100, max_wait_s=0.5)
        taken = []
        for _ in range(4):
            reservation = await limit.reserve(40)
            taken.append((reservation.granted, reservation.first_delay_s))
            assert reservation.interval_s == 0.01
        await client.aclose()
        return taken

    taken = asyncio.run(main())
    granted = [g for g, _ in taken]
    # 0.5 s of waiting at 100/s plus a burst of 9: about 60 slots, then nothing more.
    assert 55 <= sum(granted) <= 65
    assert granted[-1] == 0
    assert taken[-1][1] >= 0.4  # the next slot is that far away


def test_two_clients_share_one_budget(redis_url: str) -> None:
    async def main() -> int:
        a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
        first = FleetRateLimit(a, rate_per_s=50, max_wait_s=0.2)
        second = FleetRateLimit(b, rate_per_s=50, max_wait_s=0.2)
        total = 0
        for limit in (first, second, first, second):
            total += (await limit.reserve(100)).granted
        await a.aclose()
        await b.aclose()
        return total

    started = time.monotonic()
    total = asyncio.run(main())
    assert time.monotonic() - started < 1
    # 0.2 s at 50/s and a burst of 4: ~15 slots across both, not 15 each.
    assert 10 <= total <= 16
