"""Our transport against a bare pyreqwest loop: what PyreqwestTransport.post costs on top.

The same loop as ``ceiling.py`` (each ~1 KB event signed with a fresh timestamp, 256 POSTs in
flight to the nginx sink, every answer checked for a 200) sends through three senders:

* ``raw``: ``client.post(url).headers(h).body_bytes(b).build().send()`` then ``bytes()``, the
  ceiling's own loop (the body is read whole: fine for a benchmark, not for a service);
* ``raw_streamed``: the same through ``build_streamed()``, reading nothing of the body;
* ``ours``: :meth:`PyreqwestTransport.post` (SSRF guard, per-attempt timeout, capped excerpt
  read, error classification) with the settings a worker uses on loopback.

Rounds are interleaved (raw, raw_streamed, ours, raw, ...) so that other work on the machine
hits each sender alike. Printed per round and as medians: the rate, the process CPU per POST
(every thread: the event loop and pyreqwest's tokio threads) and the event-loop thread's CPU
per POST. The CPU figures move much less than rates on a shared machine: compare those.

    .venv/bin/python bench/bench_transport.py [--events 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from pyreqwest.client import ClientBuilder

from ascend_webhooks.delivery.transport import PyreqwestTransport
from ceiling import send_all
from harness import event_body, run_async, warn_if_busy
from sink import SinkError, nginx_sink

CONCURRENCY = 256
WARMUP = 2_000  # opens the connections and warms the code paths before the clock starts
TIMEOUT = 15.0

PostFn = Callable[[bytes, dict[str, str]], Awaitable[int | None]]


@dataclass
class Round:
    seconds: float
    process_cpu: float  # every thread of the process
    loop_cpu: float  # the event-loop thread alone
    failures: int


async def _drive(bodies: Sequence[bytes], post: PostFn) -> Round:
    """Send every body as the ceiling does (CONCURRENCY in flight), timing wall clock and CPU."""
    process, loop = time.process_time(), time.thread_time()
    seconds, failures = await send_all(bodies, post, CONCURRENCY)
    return Round(seconds, time.process_time() - process, time.thread_time() - loop, failures)


def _raw_client() -> ClientBuilder:
    return (
        ClientBuilder()
        .timeout(timedelta(seconds=TIMEOUT))
        .follow_redirects(False)
        .max_connections(CONCURRENCY)
    )


async def raw(url: str, warm: Sequence[bytes], bodies: Sequence[bytes]) -> Round:
    async with _raw_client().build() as client:

        async def post(body: bytes, headers: dict[str, str]) -> int | None:
            response = await client.post(url).headers(headers).body_bytes(body).build().send()
            await response.bytes()
            return response.status

        await _drive(warm, post)
        return await _drive(bodies, post)


async def raw_streamed(url: str, warm: Sequence[bytes], bodies: Sequence[bytes]) -> Round:
    async with _raw_client().build() as client:

        async def post(body: bytes, headers: dict[str, str]) -> int | None:
            request = client.post(url).headers(headers).body_bytes(body).build_streamed()
            async with request as response:
                return response.status

        await _drive(warm, post)
        return await _drive(bodies, post)


async def ours(url: str, warm: Sequence[bytes], bodies: Sequence[bytes]) -> Round:
    transport = PyreqwestTransport(allow_http=True, allow_private=True)
    try:

        async def post(body: bytes, headers: dict[str, str]) -> int | None:
            return (await transport.post(url, body, headers, TIMEOUT)).status_code

        await _drive(warm, post)
        return await _drive(bodies, post)
    finally:
        await transport.close()


SENDERS: dict[str, Callable[[str, Sequence[bytes], Sequence[bytes]], Awaitable[Round]]] = {
    "raw": raw,
    "raw_streamed": raw_streamed,
    "ours": ours,
}


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--events", type=int, default=50_000)
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--only", nargs="*", choices=list(SENDERS), help="senders to run")
    args = cli.parse_args(argv)
    warn_if_busy("bench_transport")
    names = args.only or list(SENDERS)
    warm = [event_body("warmup00", i) for i in range(WARMUP)]
    bodies = [event_body("transprt", i) for i in range(args.events)]
    rounds: dict[str, list[Round]] = {name: [] for name in names}
    with nginx_sink() as sink:
        for number in range(1, args.rounds + 1):
            for name in names:
                before = sink.posts()
                result = run_async(lambda name=name: SENDERS[name](sink.url, warm, bodies))  # type: ignore[misc]
                seen = sink.posts() - before
                if result.failures or seen != len(warm) + len(bodies):
                    raise SinkError(f"{name}: {result.failures} not answered 200, sink saw {seen}")
                rounds[name].append(result)
                n = len(bodies)
                print(
                    f"round {number} {name:<13} {n / result.seconds:>8,.0f}/s"
                    f"  process {result.process_cpu / n * 1e6:5.1f} µs/POST"
                    f"  loop thread {result.loop_cpu / n * 1e6:5.1f} µs/POST"
                )
    print("medians:")
    medians: dict[str, tuple[float, float, float]] = {}
    for name, results in rounds.items():
        n = len(bodies)
        rate = statistics.median(n / r.seconds for r in results)
        process = statistics.median(r.process_cpu / n * 1e6 for r in results)
        loop = statistics.median(r.loop_cpu / n * 1e6 for r in results)
        medians[name] = (rate, process, loop)
        print(f"  {name:<13} {rate:>8,.0f}/s  process {process:5.1f} µs  loop {loop:5.1f} µs")
    if "raw" in medians and "ours" in medians:
        rate_ratio = medians["ours"][0] / medians["raw"][0]
        cpu_ratio = medians["ours"][1] / medians["raw"][1]
        print(f"ours / raw: rate {rate_ratio:.2f}, process CPU per POST {cpu_ratio:.2f}")
        # Each round's ours against the same round's raw: other work on the machine moves
        # both alike, so the median of these ratios is the steadiest figure.
        pairs = list(zip(rounds["raw"], rounds["ours"], strict=True))
        process_ratio = statistics.median(o.process_cpu / r.process_cpu for r, o in pairs)
        loop_ratio = statistics.median(o.loop_cpu / r.loop_cpu for r, o in pairs)
        print(
            f"ours / raw, median of the rounds' ratios: process CPU {process_ratio:.2f},"
            f" loop-thread CPU {loop_ratio:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
