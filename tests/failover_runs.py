"""The Sentinel failover proof (tests/test_failover.py), run again and again: ``make failover``.

One run of both modes is in ``make test``; a loss that shows once in tens of runs needs more.
Each run is a fresh pytest process; its figures line (what the test prints) is shown as it
comes, and the tally at the end: runs that passed per mode, sessions accepted, lost and
dead-lettered, and how often the primary changed more than once.

    python -m tests.failover_runs [--runs N]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.processes import ROOT

FIGURES = re.compile(
    r"failover \(REDIS_WAIT_REPLICAS=(?P<mode>\d).*?primary changed (?P<failovers>\d+) time"
    r".*?accepted (?P<accepted>\d+).*?dead-lettered (?P<dead>\d+), lost (?P<lost>\d+)",
    re.DOTALL,
)
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) .*\[(wait-for-replica|asynchronous)\]", re.MULTILINE)
MODES = {"1": "wait-for-replica", "0": "asynchronous"}


def figures_of(output: str) -> dict[str, re.Match[str]]:
    """Each mode's figures line (the first: a failed run repeats it in its message)."""
    found: dict[str, re.Match[str]] = {}
    for figures in FIGURES.finditer(output):
        found.setdefault(MODES[figures["mode"]], figures)
    return found


def one_run(number: int, log_dir: Path) -> str:
    """pytest on the failover test, its output kept in ``log_dir``; returns the output."""
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rA",
            "--no-cov",
            "-p",
            "no:cacheprovider",
            "tests/test_failover.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    log = log_dir / f"run-{number:02d}.log"
    log.write_text(output)
    print(f"run {number}: pytest exit {result.returncode} in {time.monotonic() - started:.0f} s")
    for figures in figures_of(output).values():
        print("  " + " ".join(figures.group(0).split()))
    if result.returncode != 0:
        print(f"  see {log}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of both modes (default 10)")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ffe-failover-runs-"))
    passed: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for number in range(1, args.runs + 1):
        output = one_run(number, log_dir)
        for outcome, mode in OUTCOME.findall(output):
            passed[mode] += outcome == "PASSED"
        for mode, figures in figures_of(output).items():
            for name in ("accepted", "dead", "lost"):
                totals[f"{mode} {name}"] += int(figures[name])
            totals[f"{mode} promoted again"] += int(figures["failovers"]) > 1
    print(f"\ntally of {args.runs} runs (logs in {log_dir}):")
    for mode in MODES.values():
        print(
            f"  {mode}: {passed[mode]}/{args.runs} passed; accepted {totals[f'{mode} accepted']}, "
            f"lost {totals[f'{mode} lost']}, dead-lettered {totals[f'{mode} dead']}; "
            f"runs where the primary changed more than once: {totals[f'{mode} promoted again']}"
        )
    return 0 if all(passed[mode] == args.runs for mode in MODES.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
