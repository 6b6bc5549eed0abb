"""Which HTTP client should the delivery workers use? Signed POSTs, 64 in flight, to a local sink.

Measures, on the same sink in the same run:

* ``pyreqwest``: a bare pyreqwest client (pooled, no redirects);
* ``transport``: :class:`ascend_webhooks.delivery.transport.PyreqwestTransport`, i.e. pyreqwest
  plus what every attempt pays for in production (URL validation, the SSRF guard, the capped
  body read, error classification);
* ``aiohttp``: an ``aiohttp.ClientSession`` with the same pool size.

Each request is a ~1 KB event body signed with ``ascend_webhooks.sign`` (a fresh timestamp per
request, as every attempt must be). The sink is the nginx of ``bench/sink.py`` when nginx is
installed (never the bottleneck), else a small asyncio server in a subprocess (which then may
be, and the output says so)::

    .venv/bin/python bench/bench_http_clients.py [--requests 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta

from ascend_webhooks import sign

SECRET = "whsec_bench"
PostFn = Callable[[bytes, dict[str, str]], Awaitable[int]]


def event_body(n: int) -> bytes:
    data = {"invoice": f"inv_{n:08d}", "amount": 1200, "lines": ["x" * 60] * 12}
    return json.dumps({"id": f"evt_{n}", "type": "invoice.paid", "data": data}).encode()


# -- the sink ------------------------------------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    """Answers 200 to every request on a kept-alive connection (fallback sink)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length :]
            answers += 1
        if answers:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * answers)


def serve_forever(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_SinkProtocol, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def python_sink() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the sink did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def sink() -> Iterator[tuple[str, str]]:
    if shutil.which(os.environ.get("BENCH_NGINX", "/usr/sbin/nginx")):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from sink import nginx_sink

        with nginx_sink() as nginx:
            yield nginx.url, "nginx"
    else:
        with python_sink() as url:
            yield url, "python asyncio (may be the bottleneck)"


# -- the clients ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pyreqwest_client(url: str, concurrency: int) -> Iterator[PostFn]:  # type: ignore[misc]
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().follow_redirects(False).pool_max_idle_per_host(concurrency).build()

    async def post(body: bytes, headers: dict[str, str]) -> int:
        request = (
            client.post(url)
            .headers(headers)
            .body_bytes(body)
            .timeout(timedelta(seconds=15))
            .build()
        )
        response = await request.send()
        return response.status

    try:
        yield post
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def transport_client(url: str, concurrency: int) -> Iterator[PostFn]:  # type: ignore[misc]
    from ascend_webhooks.delivery.transport import PyreqwestTransport

    transport = PyreqwestTransport(allow_http=True, allow_private=True)

    async def post(body: bytes, headers: dict[str, str]) -> int:
        response = await transport.post(url, body, headers, 15.0)
        return response.status_code or 0

    try:
        yield post
    finally:
        await transport.close()


@contextlib.asynccontextmanager
async def aiohttp_client(url: str, concurrency: int) -> Iterator[PostFn]:  # type: ignore[misc]
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    session = aiohttp.ClientSession(connector=connector)

    async def post(body: bytes, headers: dict[str, str]) -> int:
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as response:
            await response.read()
            return response.status

    try:
        yield post
    finally:
        await session.close()


CLIENTS = {"pyreqwest": pyreqwest_client, "transport": transport_client, "aiohttp": aiohttp_client}


async def measure(name: str, url: str, requests: int, concurrency: int) -> float:
    bodies = [event_body(n) for n in range(256)]
    async with CLIENTS[name](url, concurrency) as post:
        counter = iter(range(requests + concurrency * 4))
        failures = 0

        async def one_lane(limit: int) -> None:
            nonlocal failures
            for n in counter:
                if n >= limit:
                    return
                body = bodies[n % len(bodies)]
                headers = sign(body, SECRET)
                headers["Content-Type"] = "application/json"
                if await post(body, headers) != 200:
                    failures += 1

        warm = concurrency * 4  # open the pool and warm the code paths first
        await asyncio.gather(*(one_lane(warm) for _ in range(concurrency)))
        counter = iter(range(requests))
        started = time.perf_counter()
        await asyncio.gather(*(one_lane(requests) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{name}: {failures} requests did not get a 200")
    return requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="best of N per client")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop (the service runs on uvloop when it is installed)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_forever(args.serve)
        return
    with sink() as (url, kind):
        print(f"sink: {kind} at {url}; {args.concurrency} in flight, {args.requests} requests")
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        run = asyncio.run
        if args.loop == "uvloop":
            try:
                import uvloop

                run = uvloop.run
            except ImportError:
                args.loop = "asyncio (uvloop is not installed)"
        print(f"event loop: {args.loop}")
        for name in args.clients.split(","):
            rates = [
                run(measure(name, url, args.requests, args.concurrency)) for _ in range(args.rounds)
            ]
            print(
                f"{name:>10}: {max(rates):9,.0f} signed POSTs/s  (rounds: "
                + ", ".join(f"{r:,.0f}" for r in rates)
                + ")"
            )


if __name__ == "__main__":
    main()
