"""The alerting rules and the dashboard: promtool's checks and unit tests, and every metric they
name served by a real ``web`` (and Flower) after real traffic, scraped by a real Prometheus.

promtool and prometheus come with Debian's ``prometheus`` package, which ``.ci/run`` installs.
Without them these tests skip locally; under CI they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from deploy.observe import (
    FLOWER_JOB,
    OWN_SETTINGS,
    RULE_TESTS,
    RULES,
    SCRAPE_CONFIG,
    WEB_JOB,
    WEB_REPLICAS_JOB,
    Prometheus,
    dashboard_queries,
    free_port,
    load_dashboard,
    load_rules,
    prometheus_binary,
)
from tests.conftest import FOX_SECRET
from tests.processes import Process, run_cli, start_worker, wait_until
from tests.test_procfile import answers, start_line
from workshop.funnelfox import FunnelFoxSimulator
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.redis_server import EmbeddedRedis

# Series Prometheus makes itself rather than scrapes.
PROMETHEUS_SERIES = {"up"}
SEVERITIES = {"critical", "warning", "info"}


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def required(program: str, found: str | None) -> str:
    """The program's path; a skip without it, a failure on CI (where .ci/run installs it)."""
    if found:
        return found
    message = f"{program} is not installed (apt-get install prometheus)"
    if on_ci():
        pytest.fail(f"{message}: .ci/run should have installed it")
    pytest.skip(message)


# --- reading metric names out of PromQL -----------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
_KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}
_SELECTOR = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Every metric selector in ``expr``: its name and its equality matchers."""
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for match in _SELECTOR.finditer(expr):
        name, braces = match.group(1), match.group(2) or ""
        if name in _KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue  # a keyword or a function
        yield name, dict(re.findall(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"', braces))


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    return {name for name, _ in selectors(expr)}


def rules_by_group() -> dict[str, list[dict[str, Any]]]:
    return {group["name"]: group["rules"] for group in load_rules()["groups"]}


def all_rules() -> list[dict[str, Any]]:
    return [rule for rules in rules_by_group().values() for rule in rules]


def named_selectors() -> list[tuple[str, str, dict[str, str]]]:
    """(where, metric name, matchers) for every selector of every rule and panel."""
    found = [
        (f"rule {rule['alert']}", name, matchers)
        for rule in all_rules()
        for name, matchers in selectors(rule["expr"])
    ]
    found += [
        (f"panel {query.panel['title']!r}", name, matchers)
        for query in dashboard_queries(load_dashboard())
        for name, matchers in selectors(query.expr)
    ]
    return found


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'sum by (sink, le) (rate(a_bucket{sink="webhook", le=~".+"}[5m])) > on () group_left ()'
        ' 0.1 * (sum(rate(b_total[10m])) or vector(0)) unless max(c) and up{job="x"} == 1e3'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "up"}
    assert dict(selectors(expr))["up"] == {"job": "x"}
    assert dict(selectors(expr))["a_bucket"] == {"sink": "webhook"}


# --- promtool ----------------------------------------------------------------------------------


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    program = required("promtool", shutil.which("promtool"))
    return subprocess.run(
        [program, *map(str, args)],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    rules = promtool("check", "rules", RULES)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in rules.stdout
    config = promtool("check", "config", SCRAPE_CONFIG)
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    tested = promtool("test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    text = RULE_TESTS.read_text()
    for rule in all_rules():
        fired = re.search(rf"alertname: {rule['alert']}\n\s+exp_alerts:\n\s+- exp_labels", text)
        assert fired, f"{rule['alert']} has no promtool test in which it fires"
        silent = re.search(rf"alertname: {rule['alert']}\n\s+exp_alerts: \[\]", text)
        assert silent, f"{rule['alert']} has no promtool test in which it stays silent"


# --- the rules and the dashboard, as files -----------------------------------------------------


def test_every_alert_says_what_it_is_what_to_do_and_how_bad() -> None:
    for rule in all_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        # A description that tells the reader what to check or run, not a restated summary.
        assert len(rule["annotations"]["description"]) > 150, rule["alert"]
    names = [rule["alert"] for rule in all_rules()]
    assert len(names) == len(set(names))


def test_the_alerts_the_readme_promises_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in all_rules()}
    wanted = {
        "FunnelFoxDeadLetters": "funnelfox_dead_letters_total",
        "FunnelFoxDestinationPaused": "funnelfox_destination_open",
        "FunnelFoxSessionsWaiting": "funnelfox_oldest_unfinished_session_age_seconds",
        "FunnelFoxQueueGrowing": "funnelfox_queue_depth",
        "FunnelFoxSecretRefused": 'reason="unauthorized"',
        "FunnelFoxRetriesClimbing": "funnelfox_retries_total",
        "FunnelFoxNoWorkerConsuming": "funnelfox_queue_depth",
        "FunnelFoxNoWorkerOnline": "flower_worker_online",
        "FunnelFoxWebNotReady": f'up{{job="{WEB_REPLICAS_JOB}"}}',
        "FunnelFoxMetricsDown": f'up{{job="{WEB_JOB}"}}',
    }
    for alert, needle in wanted.items():
        assert needle in exprs[alert], alert


def test_the_rules_use_the_shipped_job_names() -> None:
    config = SCRAPE_CONFIG.read_text()
    for job in (WEB_JOB, WEB_REPLICAS_JOB, FLOWER_JOB):
        assert f"job_name: {job}" in config
    jobs = set(re.findall(r'job="([^"]+)"', RULES.read_text()))
    assert jobs == {WEB_JOB, WEB_REPLICAS_JOB, FLOWER_JOB}


def test_the_dashboard_has_the_panels_the_readme_promises() -> None:
    dashboard = load_dashboard()
    queries = list(dashboard_queries(dashboard))
    exprs = " ".join(q.expr for q in queries)
    for needle in (
        "funnelfox_sessions_delivered_total",  # throughput per destination
        "funnelfox_delivery_latency_seconds_bucket",  # end-to-end latency percentiles
        "funnelfox_retries_total",  # by reason
        "funnelfox_dead_letters_total",  # by reason
        "funnelfox_queue_depth",
        "funnelfox_sessions{",  # pending by state
        "funnelfox_destination_open",  # breaker state
        "funnelfox_fetch_duration_seconds_bucket",  # FunnelFox fetch latency
    ):
        assert needle in exprs, needle
    assert "by (stage, reason)" in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Every panel asks the datasource the importer picks, and fits the 24-column grid.
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


# --- a real web, worker and Flower after real traffic ------------------------------------------

AUTH = "ops:alerts-test-password"
DELIVERED = [f"ses_alerts{i:02d}" for i in range(6)]
DELIVERED += ["ses_alerts-s503x1", "ses_alerts-s401x1", "ses_alerts-h500x1"]
DEAD = ["ses_alerts-s404", "ses_alerts-s401"]  # not found; FunnelFox refusing our secret


@dataclass
class Stack:
    """The Procfile's processes on one Redis database, with a Prometheus when there is one."""

    env: dict[str, str]
    client: redis.Redis
    receiver: WebhookReceiver
    web: str
    unready_web: str
    flower: str
    prometheus: Prometheus | None

    def scrape(self, base: str) -> dict[str, list[dict[str, str]]]:
        """Sample name → the label sets it was served with."""
        answer = httpx.get(f"{base}/metrics", timeout=10)
        assert answer.status_code == 200, answer.text
        text = answer.text
        found: dict[str, list[dict[str, str]]] = {}
        for metric in text_string_to_metric_families(text):
            for sample in metric.samples:
                found.setdefault(sample.name, []).append(dict(sample.labels))
        return found

    def counter(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.web}/metrics", timeout=10).text
        return sum(
            sample.value
            for metric in text_string_to_metric_families(text)
            for sample in metric.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


@pytest.fixture(scope="module")
def stack(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    simulator = FunnelFoxSimulator(secret=FOX_SECRET)
    simulator.start()
    receiver = WebhookReceiver(secret=DEMO_WEBHOOK_SECRET)
    receiver.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_SETTINGS)}
    env.update(
        REDIS_URL=redis_server_url,
        FUNNELFOX_API_URL=simulator.base_url,
        FUNNELFOX_SECRET=FOX_SECRET,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_SECRET=DEMO_WEBHOOK_SECRET,
        OUTPUT_STREAM="test:alerts",
        RETRY_BACKOFF_BASE_S="0.05",
        RETRY_BACKOFF_MAX_S="0.5",
        RETRY_MAX_ATTEMPTS="4",
        WORKER_BATCH_SIZE="5",
        PYTHONUNBUFFERED="1",
        FLOWER_BASIC_AUTH=AUTH,
        FLOWER_DB=str(tmp_path_factory.mktemp("flower") / "flower.db"),
        FLOWER_STATE_SAVE_INTERVAL_S="0",
    )
    ports = {name: free_port() for name in ("web", "unready", "flower")}
    lost_redis = EmbeddedRedis()
    processes: list[Process] = []
    prometheus = None
    try:
        processes.append(start_line("web", env, ports["web"]))
        # A web whose Redis goes away after it started (it refuses to start without one):
        # its /readyz answers 503, and so does its /metrics.
        lost_redis.start()
        processes.append(start_line("web", {**env, "REDIS_URL": lost_redis.url}, ports["unready"]))
        processes.append(start_line("flower", env, ports["flower"]))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, path in (
            ("web", "/healthz"),
            ("unready", "/healthz"),
            ("flower", "/healthcheck"),
        ):
            assert wait_until(lambda u=urls[name] + path: answers(u) == 200, 60), name
        lost_redis.stop(kill=True)
        processes.append(start_worker(env))
        if prometheus_binary():
            # Two replicas: the service address leads to the ready one, as a load balancer
            # checking /readyz would; each replica's own address is scraped for readiness.
            replicas = [f"127.0.0.1:{ports['web']}", f"127.0.0.1:{ports['unready']}"]
            prometheus = Prometheus(
                {
                    WEB_JOB: replicas[:1],
                    WEB_REPLICAS_JOB: replicas,
                    FLOWER_JOB: [f"127.0.0.1:{ports['flower']}"],
                }
            )
        found = Stack(
            env, client, receiver, urls["web"], urls["unready"], urls["flower"], prometheus
        )
        run_traffic(found)
        yield found
    finally:
        if prometheus is not None:
            prometheus.close()
        for process in reversed(processes):
            process.stop()
        receiver.stop()
        lost_redis.close()
        simulator.stop()
        client.flushdb()
        client.close()


def run_traffic(stack: Stack) -> None:
    """Deliveries, retries for each reason, a 401, a dead letter, then repeats (skipped)."""
    enqueued = run_cli(["enqueue", *DELIVERED, *DEAD], stack.env)
    assert enqueued.returncode == 0, enqueued.stderr

    def settled() -> bool:
        got = {d.session_id for d in stack.receiver.deliveries() if d.accepted}
        return set(DELIVERED) <= got and stack.client.hlen("ffe:dlq") == len(DEAD)

    assert wait_until(settled, 90, interval_s=0.2)
    assert wait_until(lambda: stack.counter("funnelfox_sessions_delivered_total") >= 18, 30)
    # The same ids again: delivered everywhere already, so skipped without a fetch.
    assert run_cli(["enqueue", *DELIVERED[:3]], stack.env).returncode == 0
    assert wait_until(lambda: stack.counter("funnelfox_sessions_skipped_total") >= 3, 60)


@pytest.mark.integration
def test_every_metric_the_rules_and_the_dashboard_name_is_served(stack: Stack) -> None:
    served = stack.scrape(stack.web)
    for name, labels in stack.scrape(stack.flower).items():
        served.setdefault(name, []).extend(labels)
    missing, unmatched = set(), set()
    for where, name, matchers in named_selectors():
        if name in PROMETHEUS_SERIES:
            continue
        if name not in served:
            missing.add(f"{name} ({where})")
        elif not any(matchers.items() <= labels.items() for labels in served[name]):
            unmatched.add(f"{name}{matchers} ({where})")
    assert not missing, f"named but not served: {sorted(missing)}"
    assert not unmatched, f"served, but never with these labels: {sorted(unmatched)}"


def prometheus_of(stack: Stack) -> Prometheus:
    found = required("prometheus", prometheus_binary())
    assert stack.prometheus is not None, found
    return stack.prometheus


@pytest.mark.integration
def test_prometheus_loads_the_rules_and_evaluates_them_on_real_data(stack: Stack) -> None:
    prometheus = prometheus_of(stack)
    host = stack.web.removeprefix("http://")
    unready = stack.unready_web.removeprefix("http://")

    def scraped() -> bool:
        up = {
            (s["metric"]["job"], s["metric"]["instance"]): s["value"][1]
            for s in prometheus.query("up")
        }
        flower = stack.flower.removeprefix("http://")
        return up == {
            (WEB_JOB, host): "1",
            (WEB_REPLICAS_JOB, host): "1",
            (WEB_REPLICAS_JOB, unready): "0",
            (FLOWER_JOB, flower): "1",
        }

    assert wait_until(scraped, 60, interval_s=0.5), prometheus.query("up")
    # /readyz fails on the web that cannot reach Redis, and Prometheus' scrape of it fails.
    assert answers(f"{stack.unready_web}/readyz") == 503
    assert answers(f"{stack.web}/readyz") == 200

    def evaluated() -> bool:
        rules = [rule for group in prometheus.rules() for rule in group["rules"]]
        return len(rules) == len(all_rules()) and all(r["health"] == "ok" for r in rules)

    assert wait_until(evaluated, 60, interval_s=0.5), prometheus.rules()
    groups = {group["name"] for group in prometheus.rules()}
    assert groups == set(rules_by_group())

    # A second refusal after Prometheus saw the first: increase() sees the counter move.
    assert prometheus.query('funnelfox_retries_total{reason="unauthorized"}')
    refused = stack.counter("funnelfox_retries_total", reason="unauthorized")
    assert run_cli(["enqueue", "ses_alerts2-s401x1"], stack.env).returncode == 0
    assert wait_until(
        lambda: stack.counter("funnelfox_retries_total", reason="unauthorized") > refused, 60
    )

    def active() -> dict[str, list[dict[str, str]]]:
        found: dict[str, list[dict[str, str]]] = {}
        for alert in prometheus.alerts():
            found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    def raised() -> bool:
        now = active()
        return {"FunnelFoxWebNotReady", "FunnelFoxSecretRefused"} <= set(now)

    assert wait_until(raised, 60, interval_s=0.5), active()
    now = active()
    assert [a["instance"] for a in now["FunnelFoxWebNotReady"]] == [unready]
    assert "FunnelFoxMetricsDown" not in now  # the service address answers
    assert "FunnelFoxDeadLettersWaiting" in now  # the 404's record waits in the store
    for quiet in ("FunnelFoxNoWorkerConsuming", "FunnelFoxNoWorkerOnline", "FunnelFoxFlowerDown"):
        assert quiet not in now, now[quiet]


@pytest.mark.integration
def test_the_replicas_job_keeps_only_up_so_nothing_is_counted_twice(stack: Stack) -> None:
    prometheus = prometheus_of(stack)
    # Both jobs scrape the ready web: the service job keeps its numbers, the replicas job not.
    served = f'funnelfox_sessions_fetched_total{{job="{WEB_JOB}"}}'
    scraped = f'up{{job="{WEB_REPLICAS_JOB}"}} == 1'
    assert wait_until(
        lambda: bool(prometheus.query(served) and prometheus.query(scraped)), 60, interval_s=0.5
    )
    kept = prometheus.query(f'count by (__name__) ({{job="{WEB_REPLICAS_JOB}"}})')
    names = {sample["metric"]["__name__"] for sample in kept}
    assert "up" in names
    # What Prometheus makes itself: the scrape's own series and the alerts on them.
    made = {"up", "ALERTS", "ALERTS_FOR_STATE"}
    assert all(name in made or name.startswith("scrape_") for name in names), names


@pytest.mark.integration
def test_prometheus_answers_every_dashboard_query(stack: Stack) -> None:
    prometheus = prometheus_of(stack)
    # Data from the traffic: at least a few scrapes after it.
    assert wait_until(
        lambda: bool(prometheus.query("funnelfox_sessions_skipped_total > 0")), 60, 0.5
    )
    end = time.time()
    empty = []
    for query in dashboard_queries(load_dashboard(), rate_interval="30s"):
        result = prometheus.query_range(query.expr, end - 60, end, 1)
        if not result:
            empty.append(f"{query.panel['title']}: {query.expr}")
    assert not empty, f"no data for: {empty}"
