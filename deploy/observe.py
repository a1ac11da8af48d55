"""A real Prometheus loaded with the shipped rules, and the dashboard's queries as PromQL.

The tests and ``deploy/render_dashboard.py`` run the Prometheus server from Debian's
``prometheus`` package with ``deploy/prometheus/prometheus.yml`` as shipped, only the targets
and intervals changed, so the rules and job names they check are the ones users load.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "funnelfox-enricher.json"
WEB_JOB = "funnelfox-web"
WEB_REPLICAS_JOB = "funnelfox-web-replicas"
FLOWER_JOB = "flower"
# Variables of the caller's environment that would change a run of the processes: the tests and
# the image script set their own and drop these.
OWN_SETTINGS = ("FUNNELFOX_", "WEBHOOK_", "RETRY_", "OUTPUT_", "WORKER_", "REDIS_", "VISIBILITY_")
OWN_SETTINGS += ("TASK_", "FLOWER_", "INGRESS_", "LOG_", "PORT", "BREAKER_", "DEDUPE_")
OWN_SETTINGS += ("DESTINATIONS_", "ENRICHMENT_", "INLINE_", "LEDGER_", "RECONCILE_")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_dashboard() -> dict[str, Any]:
    """The shipped Grafana dashboard."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def load_rules() -> dict[str, Any]:
    """The shipped alerting rules."""
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


@dataclass(frozen=True)
class Query:
    """One target of one dashboard panel."""

    panel: dict[str, Any]
    expr: str
    legend: str


def grafana_to_promql(expr: str, rate_interval: str) -> str:
    """A Grafana target as plain PromQL: its interval variables replaced by ``rate_interval``."""
    return re.sub(r"\$__(rate_)?interval|\$\{__(rate_)?interval\}", rate_interval, expr)


def dashboard_queries(dashboard: Mapping[str, Any], rate_interval: str = "1m") -> Iterator[Query]:
    """Every target of every panel (rows included), as PromQL Prometheus can answer."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                expr = grafana_to_promql(target["expr"], rate_interval)
                yield Query(inner, expr, target.get("legendFormat", ""))


def prometheus_binary() -> str | None:
    """The Prometheus server on PATH (Debian's prometheus package ships it), or None."""
    return shutil.which("prometheus")


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping ``targets`` ({job: [host:port, ...]})."""

    def __init__(self, targets: Mapping[str, list[str]], interval_s: float = 1.0) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("no prometheus on PATH (apt-get install prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="ffe-prometheus-")
        config = self._config(targets, interval_s)
        path = Path(self._dir.name) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self._log = (Path(self._dir.name) / "prometheus.log").open("wb")
        self._process = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={self._dir.name}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._client = httpx.Client(base_url=self.url, timeout=10)
        try:
            if not self._wait(self._ready, 60):
                raise RuntimeError(f"prometheus did not start:\n{self.log}")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _config(targets: Mapping[str, list[str]], interval_s: float) -> dict[str, Any]:
        """The shipped configuration with these targets, the rule file by absolute path."""
        config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
        interval = f"{max(1, round(interval_s * 1000))}ms"
        config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
        config["rule_files"] = [str(RULES)]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        if set(targets) - set(jobs):
            raise ValueError(f"no such job in {SCRAPE_CONFIG.name}: {set(targets) - set(jobs)}")
        for name, job in jobs.items():
            job["static_configs"] = [{"targets": list(targets.get(name, []))}]
        return config

    @property
    def log(self) -> str:
        """What the server printed (warnings and errors)."""
        self._log.flush()
        return (Path(self._dir.name) / "prometheus.log").read_text(errors="replace")

    def _ready(self) -> bool:
        if self._process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log}")
        try:
            return self._client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    @staticmethod
    def _wait(condition: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _api(self, path: str, **params: Any) -> Any:
        answer = self._client.get(f"/api/v1/{path}", params=params).json()
        if answer.get("status") != "success":
            raise PromQLError(f"{params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector."""
        data = self._api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        """A range query's matrix."""
        data = self._api("query_range", query=expr, start=start, end=end, step=step_s)
        result: list[dict[str, Any]] = data["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, with each rule's health and last error."""
        groups: list[dict[str, Any]] = self._api("rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, as the server evaluates the loaded rules."""
        found: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return found

    def close(self) -> None:
        """Stop the server and remove its data."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._client.close()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class PromQLError(RuntimeError):
    """Prometheus refused a query."""
