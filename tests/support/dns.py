"""A system resolver whose nameserver never answers for some names, for tests.

``socket.getaddrinfo`` is replaced (the real resolver calls it on threads): names made by
:meth:`HungDNS.dead` block until the test ends, as a lookup does whose nameserver is down;
``healthy.test`` answers 127.0.0.1 at once; every other name goes to the real resolver.
Dead names carry a suffix of their own per test, so a lookup still ending after one test can
never be joined by the next. Use it as a fixture bound to a name in the test module::

    from tests.support import dns as dns_fixtures
    from tests.support.dns import HungDNS

    hung_dns = dns_fixtures.hung_dns
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ascend_webhooks.ids import new_id

__all__ = ["HEALTHY", "HungDNS", "hung_dns"]

HEALTHY = "healthy.test"


class HungDNS:
    """Counts lookups per name and how many hang right now."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self._real = real
        self._suffix = new_id("dns").lower().replace("_", "-")
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.hanging = 0

    def dead(self, index: int) -> str:
        """A name whose lookup hangs until the test ends."""
        return f"ep{index}.{self._suffix}.dead.test"

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        with self._lock:
            self.calls[name] += 1
        if name == HEALTHY:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0))]
        if not name.endswith(f".{self._suffix}.dead.test"):
            return self._real(host, port, *args, **kwargs)
        with self._lock:
            self.hanging += 1
        try:
            self._release.wait(30)
        finally:
            with self._lock:
                self.hanging -= 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def release(self) -> None:
        """Let every hung lookup fail (a timeout, as the system resolver ends one)."""
        self._release.set()

    def wait_idle(self, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while self.hanging and time.monotonic() < deadline:
            time.sleep(0.005)


@pytest.fixture
def hung_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungDNS]:
    """The system resolver with dead names (see the module); hung lookups end after the test."""
    dns = HungDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
    try:
        yield dns
    finally:
        dns.release()
        dns.wait_idle()
