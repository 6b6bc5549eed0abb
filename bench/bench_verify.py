"""How close verify() comes to the bare work it cannot skip.

Every call of ``verify()`` must at least compute the HMAC, compare it in constant time and parse
the JSON body. This benchmark times exactly that bare work::

    hmac.digest(key, ts + b":" + body, sha256).hex()
    hmac.compare_digest(expected, v1)
    json.loads(body)

beside ``verify()`` and ``Webhook.verify()`` on the same request, in one run: interleaved rounds
(the order rotates every round, so drift in clock speed or cache state hits every contender
alike), the median of the rounds, the garbage collector paused while timing. Time is the CPU
time of the measuring thread (``time.thread_time_ns``): on a shared machine, the time other
processes hold the cores would otherwise land on whichever contender was running. The figure
of merit is ``bare time / verify time``: 1.0 would mean the checks of the contract (header
parsing, the timestamp rules, freshness, the event's shape) cost nothing; the target is at
least 0.8 on a realistic 1 KB event.

    python bench/bench_verify.py            # about 15 s
    python bench/bench_verify.py --quick    # a rough figure in a few seconds
"""

from __future__ import annotations

import argparse
import gc
import hmac
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from hashlib import sha256
from typing import Any

from ascend_webhooks import Webhook, sign, verify
from ascend_webhooks.samples import sample_body, sample_data

SECRET = "whsec_9f3c2a7e51b84d06a1e9c0b2d7f4e8a3"
TARGET = 0.8


def bodies() -> dict[str, bytes]:
    """A small, a typical (~1 KB) and a large (~16 KB) event body."""
    small = {
        "payout": {
            "id": "po_01J0C1T7YV5K2H9D3S8G6F4BQA",
            "status": "paid",
            "amount_cents": 96326,
            "currency": "usd",
            "arrived_at": "2024-06-20T13:05:44Z",
        }
    }
    invoice = sample_data("invoice.paid")
    lines = invoice["invoice"]["line_items"]
    invoice["invoice"]["line_items"] = [dict(lines[i % 2], line=i) for i in range(95)]
    return {
        "200 B": sample_body("evt_01J0C1T7YV5K2H9D3S8G6F4BQA", "payout.paid", small),
        "1 KB": sample_body("evt_01J0B6KZ3W9Q8F4T2R7N5M1XHC", "invoice.paid"),
        "16 KB": sample_body("evt_01J0B6KZ3W9Q8F4T2R7N5M1XHD", "invoice.paid", invoice),
    }


def contenders(body: bytes) -> dict[str, Callable[[], Any]]:
    headers = sign(body, SECRET)
    lower = {name.lower(): value for name, value in headers.items()}
    key = SECRET.encode()
    ts = headers["X-Ascend-Request-Timestamp"].encode()
    v1 = headers["X-Ascend-Signature"].rpartition("v1=")[2]
    webhook = Webhook(SECRET)
    digest, compare, loads = hmac.digest, hmac.compare_digest, json.loads

    def bare() -> Any:
        expected = digest(key, ts + b":" + body, sha256).hex()
        if not compare(expected, v1):
            raise AssertionError("the bare check must pass")
        return loads(body)

    return {
        "bare work": bare,
        "verify()": lambda: verify(body, headers, SECRET),
        "Webhook.verify()": lambda: webhook.verify(body, headers),
        "verify(), lowercase dict": lambda: verify(body, lower, SECRET),
    }


def calibrate(function: Callable[[], Any], batch_seconds: float) -> int:
    """Calls per batch so that one batch takes about ``batch_seconds``."""
    calls = 16
    while True:
        started = time.thread_time()
        for _ in range(calls):
            function()
        elapsed = time.thread_time() - started
        if elapsed >= batch_seconds / 4:
            return max(16, int(calls * batch_seconds / elapsed))
        calls *= 2


def measure(
    functions: dict[str, Callable[[], Any]], rounds: int, batch_seconds: float
) -> dict[str, float]:
    """Median seconds per call of each function, over interleaved rounds."""
    batch = calibrate(functions["bare work"], batch_seconds)
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for function in functions.values():  # warm up caches and the specializing interpreter
        for _ in range(batch // 4 + 1):
            function()
    gc.disable()
    try:
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                function = functions[name]
                started = time.thread_time_ns()
                for _ in range(batch):
                    function()
                samples[name].append((time.thread_time_ns() - started) / batch / 1e9)
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if the 1 KB ratio is below {TARGET}"
    )
    args = parser.parse_args()
    rounds, batch_seconds = (5, 0.01) if args.quick else (15, 0.03)

    python = f"Python {platform.python_version()} ({platform.python_implementation()})"
    print(f"{python}, {platform.machine()}, {rounds} interleaved rounds, median CPU time per call")
    header = f"{'body':>6}  {'contender':<26}{'µs/call':>9}{'calls/s':>11}{'bare/this':>11}"
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    for label, body in bodies().items():
        results = measure(contenders(body), rounds, batch_seconds)
        bare = results["bare work"]
        for name, seconds in results.items():
            ratio = bare / seconds
            print(f"{label:>6}  {name:<26}{seconds * 1e6:>9.2f}{1 / seconds:>11,.0f}{ratio:>11.2f}")
        ratios[label] = bare / results["verify()"]
        print(f"{'':>6}  ({len(body)} bytes)")
    verdict = "met" if ratios["1 KB"] >= TARGET else "NOT met"
    print(f"\n1 KB event: bare/verify() = {ratios['1 KB']:.2f} (target >= {TARGET}: {verdict})")
    return 1 if args.check and ratios["1 KB"] < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
