"""``ascend-webhooks worker --metrics-port``: a real worker process serves its own counters."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    ADMIN,
    CLI,
    eventually,
    free_port,
    processes,
    service_env,
    setup_organization,
)
from tests.support.receivers import Receiver

SUCCEEDED = 'ascend_webhooks_attempts_total{outcome="succeeded"} 1.0'


async def test_a_worker_serves_the_attempts_it_made(tmp_path: Path) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'service.db'}")
    port = free_port()
    metrics = f"http://127.0.0.1:{port}"
    async with (
        processes(tmp_path) as group,
        Receiver() as receiver,
        httpx.AsyncClient(timeout=5) as client,
    ):
        api = await group.serve(env, "--no-delivery")
        org = await setup_organization(client, api.base_url, receiver.url)
        receiver.secret = org.secret
        worker = await group.worker(env, "--metrics-port", str(port), "--concurrency", "2")
        assert (await client.get(f"{metrics}/healthz")).status_code == 200
        before = await client.get(f"{metrics}/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert SUCCEEDED not in before.text

        published = await client.post(
            f"{api.base_url}/v1/organizations/{org.id}/events",
            json={"id": "evt_metrics", "type": "invoice.paid", "data": {}},
            headers=ADMIN,
        )
        assert published.status_code == 202, published.text
        (request,) = await receiver.wait_for_requests(1, within=20)
        assert request.verified, request.verify_error

        # The outcome is counted once the attempt's response is read: shortly after arrival.
        seen = ""
        for _ in range(100):
            seen = (await client.get(f"{metrics}/metrics")).text
            if SUCCEEDED in seen:
                break
            await asyncio.sleep(0.05)
        assert SUCCEEDED in seen, seen
        assert "ascend_webhooks_attempt_duration_seconds_count 1.0" in seen
        # The API process's counters are its own: it made no attempt.
        api_metrics = (await client.get(f"{api.base_url}/metrics")).text
        assert SUCCEEDED not in api_metrics
        assert (await client.get(f"{metrics}/nowhere")).status_code == 404

        assert await worker.stop() == 0
        await eventually(lambda: _closed(port), within=5, what="the metrics port released")
        assert "Traceback" not in worker.output()


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def _refused(tmp_path: Path, *args: str, **extra: str) -> str:
    env = service_env(f"sqlite:///{tmp_path / 'service.db'}", **extra)
    process = await asyncio.create_subprocess_exec(
        *CLI, "worker", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ascend-webhooks: error:")
    return lines[0]


async def test_a_metrics_port_in_use_is_one_line_and_status_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = await _refused(tmp_path, METRICS_PORT=str(port))  # from the environment
    assert f"cannot serve metrics on 127.0.0.1:{port}" in line


@pytest.mark.parametrize(
    ("args", "extra", "reason"),
    [
        (("--metrics-port", "70000"), {}, "--metrics-port 70000 is not a TCP port"),
        ((), {"METRICS_PORT": "nine"}, "ASCEND_WEBHOOKS_METRICS_PORT: 'nine'"),
        (("--metrics-port", "0"), {}, "--metrics-port 0 is not a TCP port"),
    ],
)
async def test_a_bad_metrics_port_is_one_line_and_status_2(
    tmp_path: Path, args: tuple[str, ...], extra: dict[str, str], reason: str
) -> None:
    assert reason in await _refused(tmp_path, *args, **extra)
