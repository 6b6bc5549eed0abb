"""What every benchmark script shares: the events, the secret, the machine, the result files.

Each script in ``bench/`` sends the same ~1 KB events (same shape, same size) so that its figures
compare with the others', and writes ``bench/results/<name>.json`` (git-ignored) with the
machine it ran on, which ``bench/plot.py`` and ``docs/benchmarks.md`` are made from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "EVENT_BYTES",
    "EVENT_TYPE",
    "RESULTS_DIR",
    "SECRET",
    "event_body",
    "event_data",
    "event_id",
    "load_results",
    "machine",
    "parser",
    "percentile",
    "run_async",
    "warn_if_busy",
    "write_result",
]

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
# BENCH_RESULTS_DIR keeps one series of runs apart from others made on the same tree.
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR") or BENCH_DIR / "results")
# Only a benchmark's sink ever sees this secret; it signs like a real webhook key.
SECRET = "whsec_bench_3b1f0c9e5a7d4e2f8c6a1b0d9e8f7a6b"
EVENT_TYPE = "invoice.paid"
EVENT_BYTES = 1024  # the size of one serialized event body, give or take a few bytes

_SKELETON = {
    "invoice_id": "inv_0000000000",
    "organization": "org_bench",
    "amount_due": 129900,
    "currency": "USD",
    "status": "paid",
    "lines": [
        {"description": "Seat licence, monthly", "quantity": 12, "unit_amount": 9900},
        {"description": "Support plan", "quantity": 1, "unit_amount": 11100},
    ],
    "memo": "",
}


def event_id(run: str, index: int) -> str:
    """A unique, readable id: the run's tag and the event's number."""
    return f"evt_bench_{run}_{index:08d}"


def event_data(index: int) -> dict[str, Any]:
    """The ``data`` object of event ``index``, padded so that the whole body is ~1 KB."""
    data = dict(_SKELETON)
    data["invoice_id"] = f"inv_{index:010d}"
    skeleton = {"id": event_id("x" * 8, 0), "type": EVENT_TYPE, "data": data}
    base = len(json.dumps(skeleton, separators=(",", ":")))
    data["memo"] = "m" * max(0, EVENT_BYTES - base)
    return data


def event_body(run: str, index: int) -> bytes:
    """The exact bytes a sender POSTs for event ``index`` (compact JSON, UTF-8)."""
    event = {"id": event_id(run, index), "type": EVENT_TYPE, "data": event_data(index)}
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def run_tag() -> str:
    """A short tag that makes event ids unique per run (for idempotency keys)."""
    return os.urandom(4).hex()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the inclusive method; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return float("nan")


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, memory, Python, OS."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        # Other work on the same 2 cores moves every figure: say how busy the machine was.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def warn_if_busy(name: str) -> None:
    """Print a warning when other processes already keep the cores busy before a run."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        print(
            f"{name}: WARNING: load average {load:.1f} on {cores} cores before the run; "
            "other work on this machine will lower every figure",
            file=sys.stderr,
        )


def _commit() -> str | None:
    """The commit of the code measured (None outside a git work tree)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


# Taken when the benchmark starts: the tree may move on while it runs.
_COMMIT = _commit()


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the figures, the machine and the command."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "commit": _COMMIT,
        "machine": machine(),
        **figures,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_results() -> dict[str, dict[str, Any]]:
    """Every result file in ``bench/results``, by benchmark name."""
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(RESULTS_DIR.glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            document = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(document, dict):
                results[path.stem] = document
    return results


def parser(description: str, events: int, quick_events: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick`` and ``--events N``."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument(
        "--quick", action="store_true", help=f"a short run ({quick_events:,} events) to check it"
    )
    cli.add_argument(
        "--events", type=int, default=None, help=f"events to send (default {events:,})"
    )
    cli.set_defaults(default_events=events, quick_events=quick_events)
    return cli


def events_from(args: argparse.Namespace) -> int:
    """The event count the options ask for."""
    if args.events is not None:
        return max(1, int(args.events))
    return int(args.quick_events if args.quick else args.default_events)


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when it is installed (the service runs on it), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(factory())
    return uvloop.run(factory())


def loop_name() -> str:
    """Which event loop :func:`run_async` uses."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
