"""Every performance target of the service, measured in one sitting, printed as one table.

Runs, one after the other on this machine, each benchmark script as a subprocess writing into
one fresh results directory, then reads their result files and prints each target beside the
figure measured for it::

    .venv/bin/python bench/scorecard.py            # about 10 minutes
    .venv/bin/python bench/scorecard.py --quick    # about 3 minutes, rough figures
    .venv/bin/python bench/scorecard.py --only run_all,latency

Each script still measures its ratios within its own run (the ceiling and the baseline beside
the service, FastAPI's hello-world beside the publish route, the method's floor beside the
latency); this script only runs them back to back, so that one command and one stretch of the
machine's load give every figure, and keeps their files together in ``--results``
(default ``bench/results/scorecard-<UTC time>``). ``bench/plot.py`` draws from that directory
with ``BENCH_RESULTS_DIR`` set to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import BENCH_DIR, machine

PYTHON = sys.executable

#: (name, arguments for a full run, arguments for --quick, time bound in seconds)
SCRIPTS: list[tuple[str, list[str], list[str], float]] = [
    ("run_all", [], ["--quick"], 600),
    ("publish", [], ["--quick"], 300),
    ("latency", [], ["--quick"], 300),
    ("isolation", [], ["--quick"], 300),
    ("backlog", [], ["--quick"], 900),
]


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets and how to read its figure from the result files."""

    label: str
    wanted: str
    measure: Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]


def _get(results: dict[str, dict[str, Any]], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _rate(part: Any) -> float | None:
    if isinstance(part, dict) and "deliveries_per_s" in part and "incomplete" not in part:
        return float(part["deliveries_per_s"])
    return None


def _throughput(
    results: dict[str, dict[str, Any]], part: str = "service_sqlite"
) -> tuple[str, bool | None]:
    sqlite = _rate(_get(results, "throughput", part))
    ceiling = _rate(_get(results, "throughput", "ceiling"))
    baseline = _rate(_get(results, "throughput", "baseline"))
    if sqlite is None or not ceiling or not baseline:
        return "not measured", None
    of_ceiling, times = sqlite / ceiling, sqlite / baseline
    return (
        f"{sqlite:,.0f}/s = {of_ceiling:.0%} of {ceiling:,.0f}/s, {times:.1f}x {baseline:,.0f}/s",
        of_ceiling >= 0.70 and times >= 15,
    )


def _postgres(results: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    sqlite = _rate(_get(results, "throughput", "service_sqlite"))
    postgres = _rate(_get(results, "throughput", "service_postgres"))
    if sqlite is None or postgres is None:
        return "not measured", None
    return f"{postgres:,.0f}/s = {postgres / sqlite:.2f} of SQLite's", postgres >= sqlite


def _single(results: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    single = _get(results, "publish", "api_only", "single", "per_s")
    hello = _get(results, "publish", "hello_world", "per_s")
    if single is None or not hello:
        return "not measured", None
    return f"{single:,.0f}/s ({single / hello:.0%} of hello-world's {hello:,.0f}/s)", single >= 5000


def _batch(results: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    batch = _get(results, "publish", "api_only", "batch", "per_s")
    if batch is None:
        return "not measured", None
    minimal = _get(results, "publish", "api_only", "batch_minimal", "per_s")
    extra = f" ({minimal:,.0f} with Prefer: return=minimal)" if minimal is not None else ""
    return f"{batch:,.0f} events/s{extra}", batch >= 50_000


def _latency(name: str, p50: float, p99: float) -> Callable[..., tuple[str, bool | None]]:
    def measure(results: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
        part = _get(results, "latency", name)
        if not isinstance(part, dict) or "p50_ms" not in part:
            return "not measured", None
        lost = part.get("events", 0) - part.get("received", 0)
        text = f"p50 {part['p50_ms']:.2f} ms, p99 {part['p99_ms']:.2f} ms"
        if lost:
            text += f" ({lost} not received)"
        return text, part["p50_ms"] < p50 and part["p99_ms"] < p99 and not lost

    return measure


def _backlog(results: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    big = _get(results, "backlog", "backlog")
    kept = _get(results, "backlog", "kept")
    if not isinstance(big, dict) or kept is None:
        return "not measured", None
    return (
        f"{big['pending']:,} pending: RSS {big['rss_mb']:.0f} MB, throughput {kept:.0%} of small",
        big["rss_mb"] < 300 and kept >= 0.8 and big["pending"] >= 1_000_000,
    )


def _isolation(results: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    kept = _get(results, "isolation", "kept")
    if kept is None:
        return "not measured", None
    return f"{kept:.0%} of its throughput kept", kept >= 0.8 and "incomplete" not in (
        results.get("isolation") or {}
    )


TARGETS = [
    Target("delivery, SQLite (1 serve)", ">= 70 % of ceiling, >= 15x baseline", _throughput),
    Target(
        "  the same, --delivery-processes",
        "(the same)",
        lambda results: _throughput(results, "service_sqlite_processes"),
    ),
    Target("delivery, PostgreSQL (2 workers)", ">= SQLite", _postgres),
    Target("publish, single calls", ">= 5,000/s", _single),
    Target("publish, batch route", ">= 50,000 events/s", _batch),
    Target("latency, SQLite", "p50 < 2 ms, p99 < 10 ms", _latency("sqlite", 2, 10)),
    Target("latency, PostgreSQL", "p50 < 5 ms, p99 < 25 ms", _latency("postgres", 5, 25)),
    Target("1,000,000 pending", "RSS < 300 MB, throughput within 20 %", _backlog),
    Target("a hanging endpoint", "others keep >= 80 %", _isolation),
]

#: result file name (without .json) written by each script
RESULT_FILES = {
    "run_all": "throughput",
    "publish": "publish",
    "latency": "latency",
    "isolation": "isolation",
    "backlog": "backlog",
}


def run_scripts(names: Sequence[str], quick: bool, results_dir: Path) -> dict[str, float]:
    """Run each script in turn; return how long each took (a failed one is reported, not fatal)."""
    env = dict(os.environ, BENCH_RESULTS_DIR=str(results_dir))
    took: dict[str, float] = {}
    for name, full, short, bound in SCRIPTS:
        if name not in names:
            continue
        command = [PYTHON, str(BENCH_DIR / f"{name}.py"), *(short if quick else full)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(command, env=env, timeout=bound, check=False)
            if done.returncode:
                print(f"   {name} exited with {done.returncode}", flush=True)
        except subprocess.TimeoutExpired:
            print(f"   {name} did not finish within {bound:.0f} s", flush=True)
        took[name] = time.monotonic() - started
    return took


def load(results_dir: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in results_dir.glob("*.json"):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"  {'target':<34} {'wanted':<38} measured", "  " + "-" * 110]
    for target in TARGETS:
        text, met = target.measure(results)
        verdict = "" if met is None else ("  met" if met else "  NOT met")
        lines.append(f"  {target.label:<34} {target.wanted:<38} {text}{verdict}")
    loads = [
        _get(part, "machine", "load_avg_1m")
        for part in results.values()
        if isinstance(_get(part, "machine", "load_avg_1m"), int | float)
    ]
    if loads:
        lines.append(f"  load average at the end of each script: {min(loads):.1f}-{max(loads):.1f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Every performance target, one sitting, one table.")
    cli.add_argument("--quick", action="store_true", help="each script's --quick run")
    cli.add_argument("--only", default=None, help="comma-separated scripts, e.g. run_all,latency")
    cli.add_argument("--results", type=Path, default=None, help="directory for the result files")
    cli.add_argument("--report", action="store_true", help="only print the table of --results")
    args = cli.parse_args(argv)
    names = [name for name, *_ in SCRIPTS]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            cli.error(f"unknown script(s) {', '.join(unknown)}: choose from {', '.join(names)}")
        names = wanted
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = args.results or BENCH_DIR / "results" / f"scorecard-{stamp}"
    results_dir.mkdir(parents=True, exist_ok=True)
    took: dict[str, float] = {}
    if not args.report:
        took = run_scripts(names, args.quick, results_dir)
    results = load(results_dir)
    lines = [
        f"== every target, {'quick' if args.quick else 'full'} run, results in {results_dir} ==",
        *table(results),
    ]
    if took:
        spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items())
        lines.append(f"  time taken: {spent}")
    print("\n".join(lines))
    summary = {
        "benchmark": "scorecard",
        "measured_at": stamp,
        "machine": machine(),
        "quick": args.quick,
        "scripts": {RESULT_FILES[name]: round(took.get(name, math.nan), 1) for name in names},
        "summary": lines,
    }
    (results_dir / "scorecard.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
