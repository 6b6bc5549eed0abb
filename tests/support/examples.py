"""Running the receiver examples as real processes, and posting to them, for the adapter tests."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "event_of_size",
    "example_process",
    "free_port",
    "post_until_duplicate",
    "raw_post",
    "urlopen_post",
]


def urlopen_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with urllib; the status and body, whatever the status."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def example_process(args: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Run an example script as its README says, until it accepts connections."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **env},
            cwd=log.parent,
            stdout=out,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def post_until_duplicate(url: str, body: bytes, headers: Callable[[], dict[str, str]]) -> None:
    """The first POST is accepted; a redelivery is a duplicate once the handler finished."""
    status, answer = urlopen_post(url, body, headers())
    assert (status, json.loads(answer)["status"]) == (200, "accepted")
    deadline = time.monotonic() + 5
    while True:
        status, answer = urlopen_post(url, body, headers())
        if status == 200:
            assert json.loads(answer)["status"] == "duplicate"
            return
        assert status == 409  # still being handled
        assert time.monotonic() < deadline
        time.sleep(0.05)


def event_of_size(size: int, event_id: str = "evt_big") -> bytes:
    """A valid ``invoice.paid`` event whose JSON body is exactly ``size`` bytes."""

    def body(pad: int) -> bytes:
        event = {"id": event_id, "type": "invoice.paid", "data": {"pad": "x" * pad}}
        return json.dumps(event, separators=(",", ":")).encode()

    bare = len(body(0))
    assert size >= bare, f"an event is at least {bare} bytes"
    return body(size - bare)


def raw_post(
    url: str,
    headers: Mapping[str, str],
    parts: Iterable[bytes],
    *,
    chunked: bool = False,
    finish: bool = True,
) -> tuple[int, bytes]:
    """POST over a bare socket, sending ``parts`` as they are or as chunks; status and body.

    With ``finish=False`` the body is left unfinished (no last chunk, or fewer bytes than the
    ``Content-Length`` given): only a server that answers without reading the whole body
    answers at all; otherwise the read times out after 10 seconds and this raises.
    """
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    head = [f"POST {where.path} HTTP/1.1", f"Host: {where.netloc}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        try:
            sock.sendall("\r\n".join([*head, "", ""]).encode("latin-1"))
            for part in parts:
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked and finish:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered early and stopped reading: its answer is what counts
        response = http.client.HTTPResponse(sock, method="POST")
        try:
            response.begin()
            return response.status, response.read()
        finally:
            response.close()


def pieces(body: bytes, size: int = 1024) -> list[bytes]:
    """``body`` cut into parts of ``size`` bytes, to send as chunks."""
    return [body[i : i + size] for i in range(0, len(body), size)]


def check_announced_body_over_cap(
    url: str,
    cap: int,
    sign: Callable[[bytes], dict[str, str]],
    headers: Mapping[str, str] | None = None,
) -> None:
    """A receiver on a real server, capped at ``cap`` bytes: ``cap + 1`` bytes announced by
    ``Content-Length`` and only the first 100 sent (a server that read the body would wait)
    get a 413 ``body_too_large`` at once; exactly ``cap`` bytes then get a 200."""
    body = event_of_size(cap + 1)
    status, answer = raw_post(
        url,
        {**sign(body), **(headers or {}), "Content-Length": str(len(body))},
        [body[:100]],
        finish=False,
    )
    assert status == 413
    assert json.loads(answer)["code"] == "body_too_large"
    exact = event_of_size(cap)
    assert raw_post(url, {**sign(exact), "Content-Length": str(cap)}, [exact])[0] == 200


def check_chunked_body_over_cap(
    url: str, cap: int, sign: Callable[[bytes], dict[str, str]]
) -> None:
    """A receiver on a real server, capped at ``cap`` bytes: a chunked body of ``4 * cap``
    bytes, never finished (only a server that stops reading at the cap can answer), gets a
    413 ``body_too_large``; exactly ``cap`` bytes in two chunks then get a 200."""
    body = event_of_size(4 * cap)
    status, answer = raw_post(url, sign(body), pieces(body), chunked=True, finish=False)
    assert status == 413
    assert json.loads(answer)["code"] == "body_too_large"
    exact = event_of_size(cap)
    assert raw_post(url, sign(exact), [exact[:1000], exact[1000:]], chunked=True)[0] == 200
