"""Publish throughput: events accepted durably per second, single calls and the batch route.

wrk (C, one thread, 64 connections) POSTs single events, each with a new id, to
``/v1/organizations/{org}/events`` of one ``ascend-webhooks serve`` on a fresh SQLite database;
every 202 means the event was committed. In the same run it drives ``hello_app.py`` (FastAPI
parsing the same JSON and answering 202, nothing stored, same uvicorn settings) so the figure
reads against what the framework itself can do here. Then pyreqwest publishes through the batch
route (1,000 events a call, 4 calls in flight, the bodies built before the clock starts), once
with the full answer (every event as stored) and once with ``Prefer: return=minimal`` (each
event's id and ``created`` only).

The service runs twice: API only (``serve --no-delivery``: the publish path alone) and the
full ``serve`` delivering every event to the nginx sink while it accepts more. Beside each rate
is the CPU time of the service's main thread, its event loop, per event (``/proc/PID/task``;
with delivery, that thread also runs the worker)::

    .venv/bin/python bench/publish.py [--quick] [--seconds S] [--events N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from harness import EVENT_TYPE, event_data, run_async, run_tag, warn_if_busy, write_result
from run_all import Publisher
from service_process import ADMIN_TOKEN, Service, ServiceUnavailable, running_service
from sink import SinkError, free_port, nginx_sink

CONNECTIONS = 64
TARGET_SINGLE = 5_000.0
TARGET_BATCH = 50_000.0

_WRK_SCRIPT = """
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @TOKEN@"
request = function()
  counter = counter + 1
  local body = '{"id":"evt_wrk_@TAG@_' .. counter .. '","type":"@TYPE@","data":@DATA@}'
  return wrk.format(nil, "@PATH@", nil, body)
end
"""


def wrk_post(url_base: str, path: str, seconds: float, workdir: Path) -> dict[str, Any]:
    """Run wrk against ``url_base + path`` with unique ~1 KB events; parse what it reports."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise ServiceUnavailable("wrk is not installed: apt-get install -y wrk")
    script = workdir / f"publish-{run_tag()}.lua"
    data = json.dumps(event_data(0), separators=(",", ":"))
    text = (
        _WRK_SCRIPT.replace("@TOKEN@", ADMIN_TOKEN)
        .replace("@TAG@", run_tag())
        .replace("@TYPE@", EVENT_TYPE)
        .replace("@DATA@", data)
        .replace("@PATH@", path)
    )
    script.write_text(text, encoding="utf-8")
    command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    result = subprocess.run(
        [*command, url_base + path], capture_output=True, text=True, timeout=seconds + 60
    )
    out = result.stdout
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if result.returncode != 0 or rate is None or total is None:
        raise ServiceUnavailable(f"wrk failed:\n{out}{result.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    requests = int(total.group(1))
    rejected = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "requests": requests,
        "rejected": rejected,
        "socket_errors": errors.group(1).strip() if errors else "",
        "per_s": float(rate.group(1)) * (requests - rejected) / max(requests, 1),
        "p50_ms": _ms(p50),
        "p99_ms": _ms(p99),
    }


def _stat_seconds(path: Path) -> float:
    """User + system CPU time in a ``/proc`` ``stat`` file (fields 14 and 15)."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    return _stat_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU time so far of the process's main thread (the event loop) and of its other threads
    (the SQLite writer, its readers), each user + system (Linux ``/proc/PID/task``).

    A thread that ended since the last reading takes its time with it; the service's threads
    live as long as the process, so differences of two readings are what each side spent.
    """
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = _stat_seconds(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        if task.name == str(pid):
            main = seconds
        else:
            other += seconds
    return main, other


def _ms(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


@contextlib.contextmanager
def hello_world() -> Iterator[str]:
    """Run ``hello_app.py`` under uvicorn configured like ``serve``; yield its base URL."""
    port = free_port()
    env = dict(os.environ)
    bench_dir = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bench_dir, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "uvicorn", "hello_app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    command += ["--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, cwd=bench_dir, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/openapi.json", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable("the FastAPI hello-world did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _published_total(service: Service) -> float | None:
    """The service's own count of accepted events, from /metrics (None if not exported)."""
    with contextlib.suppress(httpx.HTTPError):
        text = service.http.get("/metrics").text
        match = re.search(r"^ascend_webhooks_events_published_total ([\d.e+]+)$", text, re.M)
        if match:
            return float(match.group(1))
    return None


def measure_service(service: Service, sink_url: str, seconds: float, events: int) -> dict[str, Any]:
    """Single publishes by wrk, then the batch route by pyreqwest, on one running service."""
    service.setup(sink_url)
    pid = service.processes[0].pid
    before = _published_total(service)
    loop = thread_cpu(pid)[0]
    single = wrk_post(service.base_url, service.events_path, seconds, service.workdir)
    single["loop_us"] = (thread_cpu(pid)[0] - loop) * 1e6 / max(single["requests"], 1)
    after = _published_total(service)
    if before is not None and after is not None:
        single["counted_by_service"] = after - before
    run = run_tag()
    figures: dict[str, Any] = {"single": single}
    for key, minimal in (("batch", False), ("batch_minimal", True)):
        publisher = Publisher(service, minimal=minimal)
        run_async(partial(publisher.publish, f"w{key}{run}", 0, 2_000))  # warm-up, the route
        prepared = publisher.prepare(f"{key}{run}", 0, events)  # bodies built before the clock
        loop = thread_cpu(pid)[0]
        start = time.perf_counter()
        accepted = run_async(partial(publisher.send, prepared))
        elapsed = time.perf_counter() - start
        figures[key] = {
            "route": "batch" if publisher.batch else "single (no batch route)",
            "events": accepted,
            "per_s": accepted / elapsed,
            "loop_us": (thread_cpu(pid)[0] - loop) * 1e6 / max(accepted, 1),
        }
    return figures


def _part(label: str, run: dict[str, Any]) -> str:
    if "skipped" in run:
        return f"  {label:<42} SKIPPED: {run['skipped'].strip().splitlines()[0][:140]}"
    single, batch = run["single"], run["batch"]
    verdict1 = "met" if single["per_s"] >= TARGET_SINGLE else "NOT met"
    verdict2 = "met" if batch["per_s"] >= TARGET_BATCH else "NOT met"
    return (
        f"  {label:<42} single {single['per_s']:>8,.0f}/s (p50 {single['p50_ms']} ms, "
        f"target >= {TARGET_SINGLE:,.0f}: {verdict1}; {single['rejected']} rejected;"
        f" event loop {single['loop_us']:.0f} us CPU/event)\n"
        f"  {'':<42} batch  {batch['per_s']:>8,.0f}/s "
        f"(target >= {TARGET_BATCH:,.0f}: {verdict2};"
        f" event loop {batch['loop_us']:.1f} us CPU/event)"
        + _minimal_part(run.get("batch_minimal"))
    )


def _minimal_part(batch: dict[str, Any] | None) -> str:
    if batch is None:
        return ""
    verdict = "met" if batch["per_s"] >= TARGET_BATCH else "NOT met"
    return (
        f"\n  {'':<42} batch  {batch['per_s']:>8,.0f}/s with Prefer: return=minimal "
        f"(target: {verdict}; event loop {batch['loop_us']:.1f} us CPU/event)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure hello-world and both service modes in one run; print and write publish.json."""
    cli = argparse.ArgumentParser(description="Publish throughput: single calls and batches.")
    cli.add_argument("--quick", action="store_true", help="2 s of wrk, 10,000 batch events")
    cli.add_argument("--seconds", type=float, default=None, help="wrk duration (default 5)")
    cli.add_argument("--events", type=int, default=None, help="batch events (default 50,000)")
    args = cli.parse_args(argv)
    warn_if_busy("publish")
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    events = args.events or (10_000 if args.quick else 50_000)
    results: dict[str, Any] = {"connections": CONNECTIONS, "seconds": seconds}
    workdir = Path(tempfile.mkdtemp(prefix="ascend-bench-publish-"))
    try:
        with hello_world() as base:
            results["hello_world"] = wrk_post(base, "/hello", seconds, workdir)
        print(f"publish: FastAPI hello-world {results['hello_world']['per_s']:,.0f}/s")
        with nginx_sink() as sink:
            for key, delivery in (("api_only", False), ("serve", True)):
                try:
                    with running_service(delivery=delivery) as service:
                        results[key] = measure_service(service, sink.url, seconds, events)
                except ServiceUnavailable as exc:
                    results[key] = {"skipped": str(exc)}
                print(_part(key, results[key]))
    except (ServiceUnavailable, SinkError) as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    hello = results["hello_world"]["per_s"]
    lines = [
        f"== publish throughput, {CONNECTIONS} connections, ~1 KB events ==",
        f"  {'FastAPI hello-world (same JSON, nothing stored)':<42} {hello:>8,.0f}/s",
        _part("serve --no-delivery (API only)", results["api_only"]),
        _part("serve (delivering to the sink meanwhile)", results["serve"]),
    ]
    for key in ("api_only", "serve"):
        if "single" in results[key]:
            ratio = results[key]["single"]["per_s"] / hello
            lines.append(f"  {key}: single publish = {ratio:.0%} of the hello-world")
    print("\n".join(lines))
    results["summary"] = lines
    print(f"wrote {write_result('publish', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
