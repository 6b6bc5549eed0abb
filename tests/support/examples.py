"""Running the receiver examples as real processes, and posting to them, for the adapter tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["example_process", "free_port", "post_until_duplicate", "urlopen_post"]


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
