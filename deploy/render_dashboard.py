"""``python -m deploy.render_dashboard``: the dashboard's panels drawn from a real run.

Grafana is not installable here (not in Debian), so this is not a Grafana screenshot: it starts
the real processes (the Procfile's worker, web and flower lines, on an embedded Redis, against
the FunnelFox simulator and a webhook receiver), a real Prometheus loaded with
deploy/prometheus/prometheus.yml and alerts.yml, sends FunnelFox webhooks with faults mixed in
for a few minutes, then asks Prometheus every panel's query from
deploy/grafana/funnelfox-enricher.json and draws the panels where the dashboard puts them.
The traffic exercises every panel, the webhook destination's circuit breaker included (the
receiver is down for 45 s); a panel that still got no data shows "No data", as Grafana would,
and is named on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.observe import (
    FLOWER_JOB,
    OWN_SETTINGS,
    ROOT,
    WEB_JOB,
    Prometheus,
    Query,
    dashboard_queries,
    free_port,
    load_dashboard,
)
from workshop.funnelfox import DEFAULT_SECRET, FunnelFoxSimulator
from workshop.procfile import PROCFILE
from workshop.receiver import DEMO_WEBHOOK_SECRET, WebhookReceiver
from workshop.redis_server import EmbeddedRedis

SCRAPE_S = 2.0
RATE_INTERVAL = "30s"
STEP_S = 5.0
OUT = ROOT / "docs" / "dashboard.png"


# --- the run ---------------------------------------------------------------------------------


def procfile_line(name: str) -> str:
    """The raw command of one Procfile line (``${PORT:-…}`` left for the shell)."""
    for line in PROCFILE.read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise KeyError(name)


class Line:
    """One Procfile line run as a process manager runs it (``sh -c``), its output in a file."""

    def __init__(self, name: str, env: Mapping[str, str], logs: Path, port: int = 0) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        if port:
            env["PORT"] = str(port)
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - the Procfile line, as its runner would
                ["/bin/sh", "-c", f"exec {procfile_line(name)}"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM, as a supervisor would; SIGKILL after 30 s."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, 9)
                self.popen.wait(10)


def wait_for(url: str, timeout_s: float, what: str) -> None:
    """Until GET url answers 200; SystemExit naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {timeout_s:.0f} s")


def session_ids(rng: random.Random, minute: float) -> str:
    """One session id; fault tokens tell the simulator and the receiver how to misbehave."""
    serial = f"ses_dash{rng.getrandbits(48):012x}"
    roll = rng.random()
    if 2.0 <= minute < 3.0 and roll < 0.25:
        return serial + "-s401x2"  # FunnelFox refuses the secret for a while
    if 3.0 <= minute < 3.75 and roll < 0.5:
        return serial + "-hslow700"  # the webhook destination slows down
    faults = [(0.06, "-s503x2"), (0.10, "-h500x2"), (0.12, "-s404"), (0.13, "-h410")]
    for threshold, token in faults:
        if roll < threshold:
            return serial + token
    return serial


def destination_down(minute: float) -> bool:
    """The webhook receiver answers 503 to everything for 45 s: 20 failures in a row
    (BREAKER_FAILURES) open its breaker within seconds, the probe 30 s later (BREAKER_PROBE_S)
    fails, and the next one, with the receiver back, closes it."""
    return 4.0 <= minute < 4.75


def send_traffic(
    web: str,
    receiver: WebhookReceiver,
    minutes: float,
    per_s: float,
    cli_env: Mapping[str, str],
) -> None:
    """FunnelFox webhooks at ``per_s``, one backfill-sized burst through the CLI, and a
    webhook destination down for a while."""
    rng = random.Random(7)
    started = time.monotonic()
    burst_sent = False
    with httpx.Client(base_url=web, headers={"Fox-Secret-Key": DEFAULT_SECRET}) as client:
        for n in itertools.count():
            elapsed = time.monotonic() - started
            if elapsed > minutes * 60:
                receiver.set_outage(None)
                return
            receiver.set_outage(503 if destination_down(elapsed / 60) else None)
            if not burst_sent and elapsed > 60 * 1.2:
                burst = "\n".join(f"ses_dashburst{i:05d}" for i in range(3000)) + "\n"
                subprocess.run(
                    [sys.executable, "-m", "worker", "enqueue", "-"],
                    input=burst,
                    env=dict(cli_env),
                    cwd=ROOT,
                    text=True,
                    capture_output=True,
                    check=True,
                )
                burst_sent = True
            event = {
                "id": f"evt_dash{n:07d}",
                "type": "onboarding.completed",
                "session_id": session_ids(rng, elapsed / 60),
                "created_at": int(time.time()),
                "is_sandbox": False,
            }
            with contextlib.suppress(httpx.TransportError):
                client.post("/webhooks/funnelfox", json=event, timeout=5)
            time.sleep(max(0.0, started + (n + 1) / per_s - time.monotonic()))


@contextlib.contextmanager
def observed_run(minutes: float, per_s: float) -> Iterator[tuple[Prometheus, float, float]]:
    """Everything started and the traffic sent: (Prometheus, start, end); stopped on exit."""
    logs = Path(tempfile.mkdtemp(prefix="ffe-dashboard-"))
    print(f"logs: {logs}")
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(EmbeddedRedis())
        simulator = stack.enter_context(FunnelFoxSimulator(secret=DEFAULT_SECRET, latency_ms=40))
        receiver = stack.enter_context(
            WebhookReceiver(secret=DEMO_WEBHOOK_SECRET, latency_ms=15, keep_bodies=False)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_SETTINGS)}
        env.update(
            REDIS_URL=redis_server.url,
            FUNNELFOX_API_URL=simulator.base_url,
            FUNNELFOX_SECRET=DEFAULT_SECRET,
            WEBHOOK_URL=receiver.url,
            WEBHOOK_SECRET=DEMO_WEBHOOK_SECRET,
            OUTPUT_STREAM="dashboard:enriched",
            RETRY_BACKOFF_BASE_S="1",
            RETRY_BACKOFF_MAX_S="20",
            FLOWER_BASIC_AUTH="ops:dashboard-render",
            FLOWER_DB=str(logs / "flower.db"),
            PYTHONUNBUFFERED="1",
        )
        web_port, flower_port = free_port(), free_port()
        for name, port in (("web", web_port), ("flower", flower_port), ("worker", 0)):
            stack.callback(Line(name, env, logs, port).stop)
        web = f"http://127.0.0.1:{web_port}"
        wait_for(f"{web}/readyz", 60, "web")
        wait_for(f"http://127.0.0.1:{flower_port}/healthcheck", 60, "flower")
        prometheus = stack.enter_context(
            Prometheus(
                {WEB_JOB: [f"127.0.0.1:{web_port}"], FLOWER_JOB: [f"127.0.0.1:{flower_port}"]},
                interval_s=SCRAPE_S,
            )
        )
        start = time.time()
        print(f"sending traffic for {minutes:g} min (webhooks at {per_s:g}/s, a burst of 3000)")
        send_traffic(web, receiver, minutes, per_s, env)
        time.sleep(2 * SCRAPE_S)  # a last scrape or two after the traffic
        yield prometheus, start, time.time()


# --- the drawing -----------------------------------------------------------------------------

BG, PANEL, GRID, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffcb7d"]
NAMED = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "blue": "#5794f2"}


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the series' value."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text or "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def fmt(value: float, unit: str) -> str:
    """A value the way the panel's unit shows it."""
    if value != value:  # NaN
        return "NaN"
    if unit == "s":
        if value < 1:
            return f"{value * 1000:.0f} ms"
        if value < 120:
            return f"{value:.1f} s"
        return f"{value / 60:.0f} min"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}K"
    return f"{value:.3g}" if value % 1 else f"{value:.0f}"


def series(
    prometheus: Prometheus, query: Query, start: float, end: float
) -> Iterator[tuple[str, list[float], list[float]]]:
    """(legend, times, values) of one target over the run."""
    for result in prometheus.query_range(query.expr, start, end, STEP_S):
        times = [float(t) for t, _ in result["values"]]
        values = [float(v) for _, v in result["values"]]
        yield legend(query.legend, result["metric"]), times, values


def threshold_color(panel: Mapping[str, Any], value: float) -> str:
    color = "green"
    for step in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return NAMED.get(color, color)


def render(prometheus: Prometheus, start: float, end: float, out: Path) -> list[str]:
    """Every panel of the dashboard, from Prometheus, in one PNG; the titles of those that
    got no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = load_dashboard()
    panels = dashboard["panels"]
    empty: list[str] = []
    by_panel: dict[int, list[Query]] = {}
    for query in dashboard_queries(dashboard, RATE_INTERVAL):
        by_panel.setdefault(query.panel["id"], []).append(query)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.75, 0.34  # inches per grid column / grid row
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 0.9), facecolor=BG)
    top_in = 0.7
    height_in = rows * unit_h + 0.9
    fig.text(
        0.006,
        1 - 0.3 / height_in,
        f"{dashboard['title']}  ·  panels rendered from a real run through Prometheus "
        f"(not a Grafana screenshot)  ·  "
        f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M}–{datetime.fromtimestamp(end):%H:%M}"
        f"  ·  rate interval {RATE_INTERVAL}",
        color=TEXT,
        fontsize=12,
        va="center",
    )

    def box(panel: Mapping[str, Any], pad: float = 0.05) -> list[float]:
        g = panel["gridPos"]
        left = (g["x"] * unit_w + pad) / (24 * unit_w)
        width = (g["w"] * unit_w - 2 * pad) / (24 * unit_w)
        bottom = 1 - (top_in + (g["y"] + g["h"]) * unit_h - pad) / height_in
        height = (g["h"] * unit_h - 2 * pad) / height_in
        return [left, bottom, width, height]

    for panel in panels:
        if panel["type"] == "row":
            left, bottom, _, height = box(panel, 0)
            fig.text(
                left + 0.002,
                bottom + height / 2,
                panel["title"],
                color=TEXT,
                fontsize=11,
                va="center",
            )
            continue
        data = [s for q in by_panel.get(panel["id"], []) for s in series(prometheus, q, start, end)]
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        x0, y0, width, height = box(panel)
        title_h = 0.28 / height_in
        if panel["type"] == "stat":
            ax = fig.add_axes((x0, y0, width, height - title_h))
        else:  # room for the value axis on the left, the time axis and legend below
            left, below = 0.6 / (24 * unit_w), 0.62 / height_in
            ax = fig.add_axes(
                (x0 + left, y0 + below, width - left - 0.004, height - title_h - below - 0.004)
            )
        fig.patches.append(
            matplotlib.patches.Rectangle(
                (x0, y0), width, height, transform=fig.transFigure, color=PANEL, zorder=-1
            )
        )
        fig.text(
            x0 + 0.004,
            y0 + height - title_h / 2,
            panel["title"],
            color=TEXT,
            fontsize=9.5,
            va="center",
            weight="bold",
        )
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(colors=MUTED, labelsize=7.5, length=0)
        finite = [(t, v) for s in data for t, v in zip(s[1], s[2], strict=True) if v == v]
        if not finite:
            empty.append(panel["title"])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(
                0.5,
                0.5,
                "No data",
                color=MUTED,
                fontsize=12,
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        if panel["type"] == "stat":
            _stat(ax, panel, data, unit)
        elif panel["type"] == "state-timeline":
            _timeline(ax, panel, data, mdates)
            _time_axis(ax, mdates, end - start)
        else:
            _timeseries(ax, panel, data, unit)
            _time_axis(ax, mdates, end - start)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor=BG)
    plt.close(fig)
    return empty


def _stat(ax: Any, panel: Mapping[str, Any], data: Sequence[Any], unit: str) -> None:
    _, times, values = data[0]
    last = next((v for v in reversed(values) if v == v), float("nan"))
    color = threshold_color(panel, last)
    ax.set_facecolor(color)
    ax.fill_between(
        [datetime.fromtimestamp(t) for t in times],
        [v if v == v else 0 for v in values],
        color="white",
        alpha=0.15,
        linewidth=0,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        fmt(last, unit),
        color="white",
        fontsize=22,
        ha="center",
        va="center",
        weight="bold",
        transform=ax.transAxes,
    )


def _time_axis(ax: Any, mdates: Any, span_s: float) -> None:
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if span_s < 300 else "%H:%M"))


def _timeseries(ax: Any, panel: Mapping[str, Any], data: Sequence[Any], unit: str) -> None:
    stacked = panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    base: dict[float, float] = {}
    for i, (name, times, values) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        clean = [v if v == v else 0.0 for v in values] if stacked else values
        if stacked:
            low = [base.get(t, 0.0) for t in times]
            high = [lo + v for lo, v in zip(low, clean, strict=True)]
            base.update(zip(times, high, strict=True))
        else:
            low, high = [0.0] * len(values), clean
        stamps = [datetime.fromtimestamp(t) for t in times]
        ax.plot(stamps, high, color=color, linewidth=1.2, label=name)
        ax.fill_between(
            stamps, low, high, color=color, alpha=0.35 if stacked else 0.08, linewidth=0
        )
    ax.grid(color=GRID, linewidth=0.6)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(lambda v, _: fmt(v, unit))
    ax.legend(
        loc="upper left",
        fontsize=7,
        frameon=False,
        labelcolor=TEXT,
        ncol=4,
        bbox_to_anchor=(-0.02, -0.1),
        handlelength=1.2,
        columnspacing=1.2,
    )


def same(a: float, b: float) -> bool:
    """Equal, NaN (no sample) included."""
    return a == b or (a != a and b != b)


def runs(times: Sequence[float], values: Sequence[float]) -> Iterator[tuple[float, float, float]]:
    """(start, end, value) of each run of one value; the last lasts one step."""
    start = 0
    for i in range(1, len(values) + 1):
        if i < len(values) and same(values[i], values[start]):
            continue
        end = times[i] if i < len(times) else times[-1] + STEP_S
        yield times[start], end, values[start]
        start = i


def _timeline(ax: Any, panel: Mapping[str, Any], data: Sequence[Any], mdates: Any) -> None:
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    stamps = [t for _, times, _ in data for t in times]
    span = max(stamps) - min(stamps)
    for row, (_, times, values) in enumerate(data):
        for t0, t1, v in runs(times, values):
            option = mapping.get(str(int(v))) if v == v else None
            color = NAMED.get(option["color"], MUTED) if option else MUTED
            left, width = mdates.date2num(datetime.fromtimestamp(t0)), (t1 - t0) / 86400
            ax.barh(row, width, left=left, color=color, height=0.8)
            if option and t1 - t0 > 0.06 * span:  # Grafana writes a state's text where it fits
                ax.text(
                    left + width / 2,
                    row,
                    option["text"],
                    color="white",
                    fontsize=7.5,
                    ha="center",
                    va="center",
                )
    ax.set_yticks(range(len(data)), [name for name, _, _ in data])
    ax.xaxis_date()


def main(argv: Sequence[str] | None = None) -> int:
    """Run, render, stop everything; the image's path on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="traffic duration (6)")
    parser.add_argument("--rate", type=float, default=4.0, help="webhooks per second (4)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG ({OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    with observed_run(args.minutes, args.rate) as (prometheus, start, end):
        empty = render(prometheus, start, end, args.out)
    print(args.out)
    if empty:
        print(f"no data in: {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
