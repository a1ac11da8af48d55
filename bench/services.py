"""What every contestant shares: a Redis database, the FunnelFox simulator, the webhook receiver."""

from __future__ import annotations

import base64
import re
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import redis

from bench.harness import Child, base_env
from workshop.redis_server import EmbeddedRedis, ensure_redis

BENCH_DB = 13
# Set after every flush: a database holding keys but not this one is someone else's.
OWNER_KEY = "funnelfox-bench:owner"
_URL = re.compile(r"https?://\S+")


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` of the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


class BenchRedis:
    """The benchmark's own Redis database, on the server found or an embedded one."""

    def __init__(self, url: str, db: int = BENCH_DB, *, own: bool = False) -> None:
        if own:
            self._embedded: EmbeddedRedis | None = EmbeddedRedis().start()
            server_url = self._embedded.url
        else:
            server_url, self._embedded = ensure_redis(url)
        self.url = with_db(server_url, db)
        self.client = redis.Redis.from_url(self.url)
        if self.client.dbsize() and not self.client.exists(OWNER_KEY):
            self.close()
            raise SystemExit(
                f"refusing to flush {self.url}: it holds keys the benchmark did not write "
                "(pick another database with --redis-db)"
            )

    @property
    def embedded(self) -> EmbeddedRedis | None:
        """The redis-server started for this run, if none was reachable."""
        return self._embedded

    def flush(self) -> None:
        """Empty the database, so no run sees another's queues or delivery records."""
        self.client.flushdb()
        self.client.set(OWNER_KEY, "1")

    def cpu_s(self) -> float:
        """The server's user + system CPU seconds so far (every database's work: the
        benchmark's database is the only busy one when run with --own-redis)."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def server_version(self) -> str:
        """The server's version, for the report."""
        return str(self.client.info("server").get("redis_version", "?"))

    def close(self) -> None:
        """Close the client; stop the embedded server if there is one."""
        self.client.close()
        if self._embedded is not None:
            self._embedded.close()


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class _Service:
    """A simulator process started with ``--port 0``, reached through its printed URL."""

    banner = ""

    def __init__(self, name: str, command: list[str], log_dir: Path) -> None:
        self.child = Child(name, command, base_env({}), log_dir)
        line = self.child.wait_for(self.banner, timeout_s=30)
        match = _URL.search(line or "")
        if match is None:
            output = self.child.output()
            self.child.stop()
            raise RuntimeError(f"{name} did not start:\n{output}")
        self.url = match.group(0)
        parts = urlsplit(self.url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        # trust_env=False: a proxy in the environment must never see loopback control calls.
        self.http = httpx.Client(base_url=self.origin, timeout=30, trust_env=False)

    def close(self) -> None:
        """Stop the process."""
        self.http.close()
        self.child.stop(timeout_s=10)


class Simulator(_Service):
    """``python -m workshop.funnelfox`` and its ``/_sim`` control routes."""

    banner = "funnelfox simulator listening on"

    def __init__(self, secret: str, log_dir: Path) -> None:
        command = _python_module(
            "workshop.funnelfox", "--port", "0", "--latency-ms", "0", "--secret", secret
        )
        super().__init__("funnelfox-sim", command, log_dir)
        self.secret = secret

    @property
    def api_url(self) -> str:
        """FUNNELFOX_API_URL for the worker."""
        return self.url

    def configure(self, latency_ms: float) -> None:
        """Delay every answer by ``latency_ms`` from now on."""
        config = orjson.dumps({"latency_ms": latency_ms})
        self.http.post("/_sim/config", content=config).raise_for_status()
        self.reset()

    def reset(self) -> None:
        """Forget every request seen."""
        self.http.post("/_sim/reset").raise_for_status()

    def requests(self) -> dict[str, list[tuple[float, int]]]:
        """Every Get Session request since the last reset: id → [(monotonic time, status)]."""
        response = self.http.get("/_sim/stats")
        response.raise_for_status()
        stats: dict[str, Any] = orjson.loads(response.content)
        return {sid: [(t, status) for t, status in rows] for sid, rows in stats["requests"].items()}


class Receiver(_Service):
    """``python -m workshop.receiver`` and its ``/_recv`` control routes."""

    banner = "webhook receiver listening on"

    def __init__(self, secret: str, log_dir: Path) -> None:
        # Bodies are dropped once checked: the harness reads ids, times and statuses only, and
        # 20,000 bodies would be some 60 MB held and sent back as JSON.
        command = _python_module(
            "workshop.receiver", "--port", "0", "--secret", secret, "--quiet", "--no-bodies"
        )
        super().__init__("webhook-receiver", command, log_dir)
        self.secret = secret

    @property
    def hook_url(self) -> str:
        """WEBHOOK_URL for the worker."""
        return self.url

    def reset(self) -> None:
        """Forget every attempt."""
        self.http.post("/_recv/reset").raise_for_status()

    def wait_distinct(self, count: int, timeout_s: float) -> int:
        """Distinct webhook-ids accepted, once ``count`` are or ``timeout_s`` passed."""
        response = self.http.get(
            "/_recv/wait",
            params={"count": count, "timeout": timeout_s, "distinct": 1},
            timeout=timeout_s + 10,
        )
        response.raise_for_status()
        return int(orjson.loads(response.content)["count"])

    def attempts(self) -> list[dict[str, Any]]:
        """Every POST received since the last reset, in arrival order."""
        response = self.http.get("/_recv/attempts")
        response.raise_for_status()
        rows: list[dict[str, Any]] = orjson.loads(response.content)
        return rows


def webhook_secret() -> str:
    """A fresh Standard Webhooks secret for this run."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def funnelfox_secret() -> str:
    """A fresh Fox-Secret for this run."""
    return "bench_" + secrets.token_hex(12)
