"""Draw ``docs/benchmarks-throughput.png`` from the result files in ``bench/results/``.

Left: delivery throughput of the baseline, the service on SQLite and on PostgreSQL, and the
ceiling, taken from one ``run_all.py`` run when there is one (the figures only compare within a
run), else from the separate ``ceiling.py`` and ``baseline_celery.py`` results. Right:
publish-to-first-attempt latency (p50, p99) from ``latency.py``, beside its targets. A part that
was not measured is drawn as an empty slot labelled with why::

    .venv/bin/python bench/plot.py [--output PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from harness import BENCH_DIR, load_results

OUTPUT = BENCH_DIR.parent / "docs" / "benchmarks-throughput.png"
COLORS = {
    "baseline": "#9e9e9e",
    "sqlite": "#1f77b4",
    "sqlite_processes": "#6baed6",
    "postgres": "#2ca02c",
    "ceiling": "#d62728",
}
LATENCY_TARGETS = {"sqlite": (2.0, 10.0), "postgres": (5.0, 25.0)}


def _rate(part: dict[str, Any] | None) -> float:
    if not part or "deliveries_per_s" not in part:
        return math.nan
    return float(part["deliveries_per_s"])


def throughput_bars(results: dict[str, dict[str, Any]]) -> tuple[list[tuple[str, str, float]], str]:
    """(label, color key, deliveries/s) per bar, and where the figures came from."""
    run = results.get("throughput")
    if run is not None:
        quick = " --quick" if "--quick" in str(run.get("command", "")) else ""
        source = f"one run_all.py{quick} run, {run.get('measured_at', '?')}"
        parts = {
            "baseline": run.get("baseline"),
            "sqlite": run.get("service_sqlite"),
            "sqlite_processes": run.get("service_sqlite_processes"),
            "postgres": run.get("service_postgres"),
            "ceiling": run.get("ceiling"),
        }
        processes = run.get("delivery_processes", "N")
    else:
        source = "separate ceiling.py and baseline_celery.py runs"
        parts = {
            "baseline": results.get("baseline_celery"),
            "sqlite": None,
            "sqlite_processes": None,
            "postgres": None,
            "ceiling": results.get("ceiling"),
        }
        processes = "N"
    client = (parts["ceiling"] or {}).get("ceiling_client", "")
    labels = {
        "baseline": "baseline\nCelery x4 + Redis",
        "sqlite": "service\nSQLite (1 serve)",
        "sqlite_processes": f"service, SQLite\nserve + {processes}\ndelivery process",
        "postgres": "service\nPostgreSQL\n(2 workers)",
        "ceiling": f"ceiling\n{client or 'fastest client'}, no storage",
    }
    return [(labels[key], key, _rate(parts[key])) for key in labels], source


def _draw_throughput(ax: Axes, results: dict[str, dict[str, Any]]) -> None:
    bars, source = throughput_bars(results)
    run = results.get("throughput", {})
    incomplete = {
        key
        for key, part in (
            ("sqlite", "service_sqlite"),
            ("sqlite_processes", "service_sqlite_processes"),
            ("postgres", "service_postgres"),
        )
        if "incomplete" in run.get(part, {})
    }
    heights = [0.0 if math.isnan(rate) else rate for _, _, rate in bars]
    positions = range(len(bars))
    ax.bar(positions, heights, color=[COLORS[key] for _, key, _ in bars])
    top = max([*heights, 1.0])
    for x, (_, key, rate) in zip(positions, bars, strict=True):
        text = "not measured" if math.isnan(rate) else f"{rate:,.0f}/s"
        if key in incomplete:
            text += "\n(incomplete)"
        ax.text(x, (0 if math.isnan(rate) else rate) + top * 0.02, text, ha="center", fontsize=9)
    ceiling = bars[-1][2]
    if not math.isnan(ceiling):
        ax.axhline(0.7 * ceiling, color=COLORS["ceiling"], linestyle="--", linewidth=1)
        ax.text(len(bars) - 1.5, 0.7 * ceiling + top * 0.01, "target: 70% of ceiling", fontsize=8)
    baseline = bars[0][2]
    if not math.isnan(baseline):
        ax.axhline(15 * baseline, color=COLORS["baseline"], linestyle=":", linewidth=1)
        ax.text(-0.4, 15 * baseline - top * 0.01, "target: 15x baseline", fontsize=8, va="top")
    ax.set_xticks(list(positions), [label for label, _, _ in bars], fontsize=7)
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("deliveries per second (higher is better)")
    ax.set_title(f"Durable delivery throughput, 1 KB events\n({source})", fontsize=10)


def _draw_latency(ax: Axes, results: dict[str, dict[str, Any]]) -> None:
    run = results.get("latency", {})
    names = ["sqlite", "postgres"]
    width = 0.35
    top = 1.0
    for n, name in enumerate(names):
        part = run.get(name) or {}
        target50, target99 = LATENCY_TARGETS[name]
        if "p50_ms" not in part:
            ax.text(n, 1.0, "not measured", ha="center", fontsize=9)
            continue
        p50, p99 = float(part["p50_ms"]), float(part["p99_ms"])
        top = max(top, p99, target99)
        ax.bar(n - width / 2, p50, width, color=COLORS[name], label="p50" if n == 0 else None)
        ax.bar(n + width / 2, p99, width, color=COLORS[name], alpha=0.5)
        ax.text(n - width / 2, p50, f"p50\n{p50:.1f}", ha="center", va="bottom", fontsize=8)
        ax.text(n + width / 2, p99, f"p99\n{p99:.1f}", ha="center", va="bottom", fontsize=8)
        for value, x in ((target50, n - width / 2), (target99, n + width / 2)):
            ax.hlines(value, x - width / 2, x + width / 2, colors="black", linestyles="--")
    labels = ["embedded SQLite\n(1 serve)", "PostgreSQL\n(API + 2 workers)"]
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    # Log scale: a target of 2 ms and a miss of 2,000 ms must both stay readable.
    ax.set_yscale("log")
    ax.set_ylim(0.1, top * 4)
    ax.set_ylabel("milliseconds, log scale (lower is better)")
    rate = run.get("rate", 500)
    ax.set_title(
        f"Publish-to-first-attempt latency at {rate:g} events/s\n(dashed: targets)", fontsize=10
    )


def draw(results: dict[str, dict[str, Any]], output: Path) -> Path:
    """Draw both panels from ``results`` into ``output`` (PNG)."""
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]}
    )
    _draw_throughput(left, results)
    _draw_latency(right, results)
    machine = next((r["machine"] for r in results.values() if "machine" in r), None)
    if machine:
        figure.suptitle(
            f"ascend-webhooks on {machine['nproc']} cores ({machine['cpu']}), "
            f"Python {machine['python']}, sink: nginx on loopback",
            fontsize=9,
        )
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Read ``bench/results/*.json`` and write the PNG."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cli.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT.name} in docs/")
    cli.add_argument(
        "--quick", action="store_true", help="accepted like every bench; plotting is quick"
    )
    args = cli.parse_args(argv)
    results = load_results()
    if not results:
        print("plot: no results in bench/results/: run the benchmarks first", file=sys.stderr)
        return 1
    print(f"wrote {draw(results, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
