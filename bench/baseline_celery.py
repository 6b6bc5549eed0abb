"""The baseline: what a Python team would build instead of ascend-webhooks.

Celery with the prefork pool (4 processes) on the local Redis, one task per delivery that signs
the event the same way (``ascend_webhooks.sign``, a fresh timestamp per attempt) and POSTs it with
``requests`` (a session per worker process, so connections are reused), retrying on anything but
a 200. Events are enqueued one ``apply_async`` at a time while the workers drain them; the figure
is deliveries per second from the first enqueue until the sink has answered the last one.

Uses Redis at 127.0.0.1:6379, database 13, with every key under the ``ascend-bench-celery:``
prefix; only those keys are deleted, before and after the run::

    .venv/bin/python bench/baseline_celery.py [--quick] [--events N]

This file is also the Celery app: the worker subprocess imports it (``-A baseline_celery``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from celery import Celery, Task  # type: ignore[import-untyped]

from ascend_webhooks import sign
from harness import SECRET, event_body, events_from, parser, warn_if_busy, write_result
from sink import Sink, SinkError, nginx_sink

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
KEY_PREFIX = "ascend-bench-celery:"
QUEUE = "deliveries"
PROCESSES = 4
WARMUP = 200

app = Celery("baseline_celery", broker=f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}")
app.conf.update(
    broker_transport_options={"global_keyprefix": KEY_PREFIX},
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)

_session: requests.Session | None = None


def _http() -> requests.Session:
    # One session per worker process, made after the fork: pooled keep-alive connections.
    global _session
    if _session is None:
        _session = requests.Session()
    return _session


@app.task(bind=True, max_retries=10, acks_late=True)  # type: ignore[untyped-decorator]
def deliver(self: Task, url: str, body_text: str) -> None:
    """POST one signed event; anything but a 200 is retried later (up to 10 times)."""
    body = body_text.encode("utf-8")
    headers = sign(body, SECRET)
    headers["Content-Type"] = "application/json"
    try:
        response = _http().post(url, data=body, headers=headers, timeout=15, allow_redirects=False)
    except requests.RequestException as exc:
        raise self.retry(exc=exc, countdown=1) from exc
    if response.status_code != 200:
        raise self.retry(countdown=1)


def _redis() -> Any:
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)


def clear_own_keys() -> int:
    """Delete this benchmark's keys (and only them); return how many there were."""
    client = _redis()
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


@contextmanager
def celery_workers() -> Iterator[subprocess.Popen[bytes]]:
    """Start a prefork worker with 4 processes on this app; stop it (warm, then hard) on exit."""
    env = dict(os.environ)
    bench_dir = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bench_dir, env.get("PYTHONPATH")) if p)
    # The benchmark machine runs it as root; Celery's warning about that is noise here.
    env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "baseline_celery",
        "worker",
        "--pool=prefork",
        f"--concurrency={PROCESSES}",
        f"--queues={QUEUE}",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    proc = subprocess.Popen(
        command,
        cwd=bench_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # its pool processes form one group we can stop together
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: the main process stops its pool
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _ping_redis() -> None:
    try:
        _redis().ping()
    except Exception as exc:  # any failure here means "no Redis": say so plainly
        raise SinkError(f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer: {exc}") from exc


def measure_baseline(sink: Sink, events: int) -> dict[str, Any]:
    """Run the Celery baseline against ``sink``: deliveries/s from first enqueue to last 200."""
    _ping_redis()
    clear_own_keys()
    texts = [event_body("celery00", i).decode("utf-8") for i in range(events)]
    warm = [event_body("warmup00", i).decode("utf-8") for i in range(WARMUP)]
    try:
        with celery_workers() as worker:
            # Warm-up doubles as the readiness check: the workers are up once these arrive.
            before = sink.posts()
            for text in warm:
                deliver.apply_async((sink.url, text))
            sink.wait_for(before + WARMUP, timeout=60)
            if worker.poll() is not None:
                raise SinkError("the Celery worker exited during the warm-up")

            before = sink.posts()
            start = time.perf_counter()
            for text in texts:
                deliver.apply_async((sink.url, text))
            enqueued = time.perf_counter()
            done = sink.wait_for(before + events, timeout=max(120.0, events / 50))
    finally:
        clear_own_keys()
    elapsed = done - start
    return {
        "events": events,
        "processes": PROCESSES,
        "pool": "prefork",
        "broker": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        "enqueue_per_s": events / (enqueued - start),
        "seconds": elapsed,
        "deliveries_per_s": events / elapsed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Start a sink, drain N events through Celery, print the rate, write the result file."""
    cli = parser("Celery (prefork, 4 processes) + Redis + requests.", 10_000, 2_000)
    args = cli.parse_args(argv)
    warn_if_busy("baseline")
    events = events_from(args)
    try:
        with nginx_sink() as sink:
            figures = measure_baseline(sink, events)
    except (SinkError, TimeoutError) as exc:
        print(f"baseline: {exc}", file=sys.stderr)
        return 1
    print(
        f"baseline: {figures['deliveries_per_s']:,.0f} deliveries/s "
        f"(Celery prefork x{PROCESSES} + Redis + requests; {events:,} events in "
        f"{figures['seconds']:.2f} s; enqueued at {figures['enqueue_per_s']:,.0f}/s)"
    )
    print(f"wrote {write_result('baseline_celery', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
