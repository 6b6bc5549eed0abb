"""Which JSON library should the publish path use? The work it does per event, per library.

For a batch of 1,000 ~1 KB events (the body of one call to the batch route), each library
does what the publish path needs: parse the request body, then for every event encode its
stored body (compact ``{"id", "type", "data"}``) and its canonical form (keys sorted, for the
content hash). Reported: CPU time per event (the measuring thread's clock), median of
interleaved rounds, and each library's figure over the standard library's::

    .venv/bin/python bench/bench_json.py [--rounds 15]

The standard library's ``json`` and orjson always run; msgspec runs when it is installed (the
``bench`` extra installs it). Results are in docs/benchmarks.md ("What the service is built on").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import orjson

from harness import EVENT_TYPE, event_data, event_id

BATCH = 1_000


def _batch_body() -> bytes:
    events = [
        {"id": event_id("json", n), "type": EVENT_TYPE, "data": event_data(n)} for n in range(BATCH)
    ]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def _stdlib(body: bytes) -> None:
    for item in json.loads(body)["events"]:
        wire = {"id": item["id"], "type": item["type"], "data": item["data"]}
        json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
        canonical = {"type": item["type"], "data": item["data"], "ordering_key": None}
        json.dumps(canonical, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def _orjson(body: bytes) -> None:
    for item in orjson.loads(body)["events"]:
        orjson.dumps({"id": item["id"], "type": item["type"], "data": item["data"]})
        canonical = {"type": item["type"], "data": item["data"], "ordering_key": None}
        orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)


def _msgspec() -> Callable[[bytes], None] | None:
    try:
        import msgspec
    except ImportError:
        return None
    decode = msgspec.json.Decoder().decode
    encode = msgspec.json.Encoder().encode
    encode_sorted = msgspec.json.Encoder(order="sorted").encode

    def run(body: bytes) -> None:
        for item in decode(body)["events"]:
            encode({"id": item["id"], "type": item["type"], "data": item["data"]})
            encode_sorted({"type": item["type"], "data": item["data"], "ordering_key": None})

    return run


def _time(run: Callable[[bytes], None], body: bytes) -> float:
    started = time.thread_time()
    run(body)
    return (time.thread_time() - started) * 1e6 / BATCH


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--rounds", type=int, default=15)
    args = cli.parse_args(argv)
    body = _batch_body()
    contenders: dict[str, Callable[[bytes], None]] = {"json (stdlib)": _stdlib, "orjson": _orjson}
    msgspec_run = _msgspec()
    if msgspec_run is not None:
        contenders["msgspec"] = msgspec_run
    else:
        print("msgspec not installed: skipped")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(args.rounds + 1):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            figure = _time(contenders[name], body)
            if round_:  # the first round warms up
                times[name].append(figure)
    stdlib = statistics.median(times["json (stdlib)"])
    print(f"per event, {len(body) / BATCH:,.0f} B each, a batch of {BATCH:,}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<14} {median:6.2f} us CPU  ({median / stdlib:.2f} of the stdlib's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
