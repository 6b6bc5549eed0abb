"""Publish path, before and after, in one run: FastAPI's hello-world and the service side by side.

``publish.py`` measures the service as it stands. This script answers the profiling question
"did that change help?" on a busy machine, where figures drift by 2x between runs: it measures,
in the same run and interleaved round by round, FastAPI's hello-world (``hello_app.py``), the
service as it was at a git revision (``--baseline REV``, checked out into a temporary worktree and
run from its sources; or ``--baseline-tree DIR``, a checkout as it is) and the service in this
tree, each as ``serve --no-delivery`` on a fresh SQLite file: wrk single publishes (the same Lua
script as ``publish.py``), then the batch route (1,000 events a call, 4 in flight, the bodies
built before the clock starts).

Besides rates, which follow the machine's load, it reports the service's CPU time per accepted
event, split by thread (``/proc/PID/task``): the main thread, which is the event loop (HTTP,
parsing, validation, building each event, the answer), and the others, mostly the SQLite
writer. The first is the API's own cost with the store's taken out; CPU per event moves far
less with the machine's load than rates do. ``--py-spy FILE.svg`` also records a flame graph of
this tree's service while wrk drives it (py-spy must be installed, and allowed to attach)::

    .venv/bin/python bench/profile_publish.py --baseline HEAD~3 [--rounds 2] [--py-spy out.svg]
    .venv/bin/python bench/profile_publish.py --only batch --no-hello --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from harness import run_async, run_tag, warn_if_busy, write_result
from publish import cpu_seconds, hello_world, thread_cpu, wrk_post
from service_process import (
    ADMIN_TOKEN,
    Service,
    ServiceUnavailable,
    publish_payload,
    running_service,
)

REPO = Path(__file__).resolve().parent.parent
BATCH = 1_000  # events per call: the batch route's limit
BATCHES_IN_FLIGHT = 4


def batch_bodies(run: str, events: int) -> list[bytes]:
    """The request bodies of ``events`` events, 1,000 a call (built before any timing)."""
    return [
        orjson.dumps(
            {"events": [publish_payload(run, i) for i in range(n, min(n + BATCH, events))]}
        )
        for n in range(0, events, BATCH)
    ]


def post_batches(service: Service, bodies: list[bytes]) -> int:
    """POST every body to the batch route, 4 calls in flight; the events answered 202.

    The bodies are built beforehand and the answers only counted, not parsed, so that the
    client's own CPU (on the same cores) stays small beside the service's.
    """
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    url = f"{service.base_url}{service.events_path}/batch"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}

    async def run() -> int:
        builder = ClientBuilder().timeout(timedelta(seconds=60)).default_headers(headers)
        async with builder.max_connections(BATCHES_IN_FLIGHT).build() as client:
            queue = list(reversed(bodies))

            async def worker() -> int:
                done = 0
                while queue:
                    response = await client.post(url).body_bytes(queue.pop()).build().send()
                    answer = bytes(await response.bytes())
                    if response.status != 202:
                        raise ServiceUnavailable(
                            f"batch answered {response.status}: {answer[:300]!r}"
                        )
                    done += answer.count(b'"created":true')
                return done

            return sum(await asyncio.gather(*(worker() for _ in range(BATCHES_IN_FLIGHT))))

    return run_async(run)


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of ``revision`` in a temporary directory, removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="ascend-profile-")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(where.parent, ignore_errors=True)


def _py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("profile: py-spy is not installed; no flame graph", file=sys.stderr)
        return None
    command = [spy, "record", "-o", str(out), "--pid", str(pid), "-d", f"{seconds:g}"]
    command += ["-r", "200", "--nonblocking"]
    if out.suffix == ".txt":
        command += ["-f", "raw"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def measure(
    service: Service,
    seconds: float,
    events: int,
    spy_to: Path | None,
    spy_batch_to: Path | None = None,
    parts: Sequence[str] = ("single", "batch"),
) -> dict[str, float]:
    """Single calls by wrk, then the batch route, on one service (either under py-spy)."""
    service.setup("http://127.0.0.1:9/", name="profile")
    pid = service.processes[0].pid
    single: dict[str, Any] = {"per_s": 0.0, "p50_ms": 0.0, "requests": 0, "rejected": 0}
    single_cpu = single_loop = single_other = 0.0
    if "single" in parts:
        spy = _py_spy(pid, seconds, spy_to) if spy_to is not None else None
        cpu, threads = cpu_seconds(pid), thread_cpu(pid)
        single = wrk_post(service.base_url, service.events_path, seconds, service.workdir)
        single_cpu = cpu_seconds(pid) - cpu
        single_loop, single_other = (b - a for a, b in zip(threads, thread_cpu(pid), strict=True))
        if spy is not None:
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(f"profile: py-spy failed: {err.decode()[-400:]}", file=sys.stderr)
    batch = batch_cpu = batch_loop = batch_other = 0.0
    accepted = 0
    if "batch" in parts:
        run = run_tag()
        post_batches(service, batch_bodies(f"w{run}", 2_000))  # warm-up
        bodies = batch_bodies(run, events)
        spy = None
        if spy_batch_to is not None:
            spy = _py_spy(pid, 600, spy_batch_to)
        cpu, threads = cpu_seconds(pid), thread_cpu(pid)
        start = time.perf_counter()
        accepted = post_batches(service, bodies)
        batch = accepted / (time.perf_counter() - start)
        batch_cpu = cpu_seconds(pid) - cpu
        batch_loop, batch_other = (b - a for a, b in zip(threads, thread_cpu(pid), strict=True))
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has recorded and exits
            spy.communicate(timeout=60)
    if single["rejected"]:
        print(f"profile: {single['rejected']} single calls were not answered 2xx", file=sys.stderr)
    singles = max(single["requests"] - single["rejected"], 1)
    accepted = max(accepted, 1)
    return {
        "single": single["per_s"],
        "p50_ms": single["p50_ms"] or 0.0,
        "batch": batch,
        # The service's own CPU per accepted event: steadier than rates on a busy machine.
        "single_cpu_us": single_cpu * 1e6 / singles,
        "batch_cpu_us": batch_cpu * 1e6 / accepted,
        # Split by thread: the event loop (HTTP, parsing, validation, building, answers) and
        # the rest (mostly the SQLite writer), so that the API's own cost per event shows
        # with the store's taken out.
        "single_loop_us": single_loop * 1e6 / singles,
        "single_other_us": single_other * 1e6 / singles,
        "batch_loop_us": batch_loop * 1e6 / accepted,
        "batch_other_us": batch_other * 1e6 / accepted,
    }


_KEYS = (
    "single",
    "p50_ms",
    "batch",
    "single_cpu_us",
    "batch_cpu_us",
    "single_loop_us",
    "single_other_us",
    "batch_loop_us",
    "batch_other_us",
)


def _line(label: str, got: dict[str, float]) -> str:
    """One variant's figures: rates, then CPU per event (process; event loop + other threads)."""
    text = f"{label:<22}"
    if got["single"]:
        text += (
            f" single {got['single']:>7,.0f}/s (p50 {got['p50_ms']:.1f} ms; CPU/event"
            f" {got['single_cpu_us']:.0f} us = loop {got['single_loop_us']:.0f}"
            f" + other {got['single_other_us']:.0f})"
        )
    if got["batch"]:
        text += (
            f"  batch {got['batch']:>7,.0f}/s (CPU/event {got['batch_cpu_us']:.1f} us ="
            f" loop {got['batch_loop_us']:.1f} + other {got['batch_other_us']:.1f})"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Publish path: baseline vs this tree, one run.")
    cli.add_argument("--baseline", help="git revision to compare against (e.g. HEAD~2)")
    cli.add_argument(
        "--baseline-tree",
        type=Path,
        help="a checkout to compare against as it is (its src/), e.g. some files put back",
    )
    cli.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    cli.add_argument("--seconds", type=float, default=5.0, help="wrk duration (default 5)")
    cli.add_argument("--events", type=int, default=30_000, help="batch events (default 30,000)")
    cli.add_argument("--py-spy", type=Path, help="flame graph (.svg) or raw stacks (.txt)")
    cli.add_argument("--py-spy-batch", type=Path, help="the same, while batches are published")
    cli.add_argument(
        "--only", choices=("single", "batch"), help="measure only single calls or only batches"
    )
    cli.add_argument("--no-hello", action="store_true", help="skip FastAPI's hello-world")
    args = cli.parse_args(argv)
    warn_if_busy("profile_publish")
    workdir = Path(tempfile.mkdtemp(prefix="ascend-profile-publish-"))
    figures: dict[str, list[dict[str, float]]] = {"hello_world": []}
    # Rates move with the machine's load; the service's CPU time per event much less.
    with contextlib.ExitStack() as stack:
        variants: list[tuple[str, dict[str, str]]] = []
        if args.baseline:
            tree = stack.enter_context(worktree(args.baseline))
            label = f"baseline {args.baseline}"
            variants.append((label, {"PYTHONPATH": str(tree / "src")}))
        if args.baseline_tree:
            label = f"baseline {args.baseline_tree.name}"
            variants.append((label, {"PYTHONPATH": str(args.baseline_tree.resolve() / "src")}))
        variants.append(("this tree", {"PYTHONPATH": str(REPO / "src")}))
        for label, _ in variants:
            figures[label] = []
        parts = (args.only,) if args.only else ("single", "batch")
        try:
            for round_ in range(args.rounds):
                if not args.no_hello and args.only != "batch":
                    with hello_world() as base:
                        hello = wrk_post(base, "/hello", args.seconds, workdir)
                    figures["hello_world"].append({"single": hello["per_s"], "p50_ms": 0.0})
                    print(f"round {round_ + 1}: hello-world {hello['per_s']:,.0f}/s", flush=True)
                for label, env in variants:
                    first = label == "this tree" and round_ == 0
                    spy = args.py_spy if first else None
                    spy_batch = args.py_spy_batch if first else None
                    with running_service(delivery=False, extra_env=env) as service:
                        got = measure(service, args.seconds, args.events, spy, spy_batch, parts)
                    figures[label].append(got)
                    print(f"round {round_ + 1}: {_line(label, got)}", flush=True)
        except ServiceUnavailable as exc:
            print(f"profile: {exc}", file=sys.stderr)
            return 1
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    hellos = [f["single"] for f in figures["hello_world"]]
    hello_median = statistics.median(hellos) if hellos else 0.0
    lines = [f"== publish, median of {args.rounds} rounds, load {os.getloadavg()[0]:.1f} =="]
    if hellos:
        lines.append(f"  {'FastAPI hello-world':<24} single {hello_median:>7,.0f}/s")
    summary: dict[str, Any] = {"hello_world": hello_median}
    for label, _ in variants:
        medians = {key: statistics.median(f[key] for f in figures[label]) for key in _KEYS}
        summary[label] = medians
        lines.append(f"  {_line(label, medians)}")
        if hellos and medians["single"]:
            ratio = medians["single"] / hello_median
            lines.append(f"  {'':<24} single = {ratio:.0%} of hello-world")
    print("\n".join(lines))
    print(f"wrote {write_result('profile_publish', {'rounds': figures, 'summary': summary})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
