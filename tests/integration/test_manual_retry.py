"""A delivery that used up every retry is ``failed``; a manual retry delivers it once the
receiver recovers, through the real API, the real worker and a loopback receiver."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.api import Api, api_settings, running_api
from tests.support.receivers import Receiver, Reply


async def _wait_for_status(api: Api, path: str, status: str, within: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        body = (await api.call("GET", path, expect=200)).json()
        if body["status"] == status:
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_failed_delivery_is_delivered_by_a_manual_retry(database_url: str) -> None:
    settings = api_settings(database_url, retry_schedule=(0.01, 0.01))  # 3 attempts a round
    async with running_api(settings, run_delivery=True) as api:
        org = await api.organization()
        secret = (await api.call("POST", f"/v1/organizations/{org}/keys", expect=201)).json()[
            "secret"
        ]
        async with Receiver(secret=secret, behaviour=Reply(503)) as receiver:
            await api.endpoint(org, receiver.url)
            published = (await api.publish(org, type="payout.failed")).json()
            path = f"/v1/organizations/{org}/deliveries/{published['deliveries'][0]['id']}"

            failed = await _wait_for_status(api, path, "failed")
            assert failed["attempt_count"] == 3
            assert [a["status_code"] for a in failed["attempts"]] == [503, 503, 503]
            assert len(receiver.requests) == 3

            receiver.respond(Reply(200))
            await api.call("POST", f"{path}/retry", expect=202)
            succeeded = await _wait_for_status(api, path, "succeeded")

    assert succeeded["attempt_count"] == 4
    assert [a["number"] for a in succeeded["attempts"]] == [1, 2, 3, 4]
    assert succeeded["attempts"][-1]["status_code"] == 200
    # The retried attempt carries the same event, byte for byte, and verifies.
    assert len(receiver.requests) == 4
    assert receiver.requests[-1].body == receiver.requests[0].body
    assert receiver.requests[-1].verified
