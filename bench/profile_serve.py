"""Where one ``serve`` spends its CPU per event during the SQLite part of ``run_all.py``.

Starts ``serve`` on a fresh SQLite file, as ``run_all.py`` does, publishes the same events
through the batch route while it delivers them to the nginx sink, and reads the CPU time of
each of the service's threads (Linux ``/proc/PID/task``) around the measured window: the main
thread (the event loop: the API and the worker's attempts), pyreqwest's thread (the HTTP
client's own I/O), uvloop's helper threads, and the rest (the SQLite writer and its readers).
It also reports the delivery rate every half second, which shows how delivery shares the
machine with a burst of publishing::

    .venv/bin/python bench/profile_serve.py [--events 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from run_all import measure_service
from service_process import running_service
from sink import Sink, nginx_sink

_TICK = os.sysconf("SC_CLK_TCK")


def thread_groups(pid: int) -> dict[str, float]:
    """CPU seconds so far of the process's threads, by group (see the module docstring)."""
    groups: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICK
        if task.name == str(pid):
            group = "event loop (main thread)"
        elif name.startswith("pyreqwest"):
            group = "pyreqwest"
        elif name.startswith("libuv"):
            group = "uvloop helpers"
        else:
            group = "SQLite writer + readers"
        groups[group] = groups.get(group, 0.0) + seconds
    return groups


def one_round(sink: Sink, events: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service(f"sqlite:///{Path(tmp) / 'bench.db'}") as service,
    ):
        pid = service.processes[0].pid
        counter = Sink(sink.host, sink.port, sink.prefix)  # its own connection to stub_status
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(), counter.requests_total()))
                stop.wait(0.5)

        before: dict[str, float] = {}
        sampler = threading.Thread(target=sample, daemon=True)

        def start_readings() -> None:  # after the warm-up, as the clock starts
            before.update(thread_groups(pid))
            sampler.start()

        figures = measure_service(sink, service, events, after_warmup=start_readings)
        stop.set()
        sampler.join()
        after = thread_groups(pid)
    per_event = {g: (after[g] - before.get(g, 0.0)) * 1e6 / events for g in after}
    rates = [
        (t1 - samples[0][0], (n1 - n0) / (t1 - t0))
        for (t0, n0), (t1, n1) in itertools.pairwise(samples)
    ]
    return {"figures": figures, "cpu_us_per_event": per_event, "rates": rates}


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--events", type=int, default=50_000)
    cli.add_argument("--rounds", type=int, default=3)
    args = cli.parse_args(argv)
    rounds = []
    with nginx_sink() as sink:
        for n in range(args.rounds):
            result = one_round(sink, args.events)
            rounds.append(result)
            figures = result["figures"]
            cpu = result["cpu_us_per_event"]
            print(
                f"round {n + 1}: {figures['deliveries_per_s']:,.0f} deliveries/s, published at "
                f"{figures['publish_per_s']:,.0f}/s; CPU per event: "
                + ", ".join(f"{g} {v:.1f} us" for g, v in sorted(cpu.items()))
                + f"; total {sum(cpu.values()):.1f} us"
            )
            print(
                "  delivered per second, every 0.5 s: "
                + " ".join(f"{rate:,.0f}" for _, rate in result["rates"])
            )
    groups = sorted({g for r in rounds for g in r["cpu_us_per_event"]})
    print(
        "median CPU per event (us): "
        + ", ".join(
            f"{g} {statistics.median(r['cpu_us_per_event'].get(g, 0.0) for r in rounds):.1f}"
            for g in groups
        )
        + f"; load {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
