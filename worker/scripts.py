"""Lua scripts called by SHA inside pipelines, loaded only when Redis lacks them.

redis-py asks Redis ``SCRIPT EXISTS`` before every pipeline that calls a registered script: one
more round trip per ledger write, which the live path (a batch of one) pays on every stage.
Here a pipeline calls ``EVALSHA`` straight away; when Redis answers NOSCRIPT (it restarted, or
a failover promoted a replica that never saw the script) the scripts are loaded and the
pipeline runs again. Only pipelines whose other commands may run twice use this: a NOSCRIPT
script did not run, but the commands beside it did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError


def call(pipe: Any, script: AsyncScript | Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue one call of ``script`` on ``pipe`` by its SHA."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def execute(
    client: aioredis.Redis, fill: Callable[[Any], None], scripts: Sequence[AsyncScript]
) -> list[Any]:
    """Run a pipeline ``fill`` queues commands on (script calls by ``call``)."""
    try:
        return await _run(client, fill)
    except NoScriptError:
        for script in scripts:
            await client.script_load(script.script)
        return await _run(client, fill)


def execute_sync(
    client: redis.Redis, fill: Callable[[Any], None], scripts: Sequence[Script]
) -> list[Any]:
    """The same on a blocking client."""
    try:
        return _run_sync(client, fill)
    except NoScriptError:
        for script in scripts:
            client.script_load(script.script)
        return _run_sync(client, fill)


async def _run(client: aioredis.Redis, fill: Callable[[Any], None]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        fill(pipe)
        return list(await pipe.execute())


def _run_sync(client: redis.Redis, fill: Callable[[Any], None]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        fill(pipe)
        return list(pipe.execute())
