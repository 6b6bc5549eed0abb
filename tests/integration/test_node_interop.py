"""Interoperability with receivers written like Ascend's guide, in real Node.js.

The guide's receiver (Express, ``bodyParser.raw``) computes
``crypto.createHmac('sha256', secret).update(`${timestamp}:${rawBody}`).digest('hex')`` and
compares the whole ``X-Ascend-Signature`` string with ``t=${timestamp},v1=${hmac}``. What
``sign()`` produces must pass that check byte for byte, and what Node signs must pass
``verify()``; non-ASCII bodies and secrets included, since that is where encodings diverge.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ascend_webhooks import InvalidPayloadError, SignatureVerificationError, sign, verify

NODE = shutil.which("node")
if NODE is None:  # pragma: no cover - depends on the machine
    if os.environ.get("CI") == "true":
        pytest.fail("node is required on CI for the interoperability tests", pytrace=False)
    pytest.skip(
        "node is not installed (needed for the interoperability tests)", allow_module_level=True
    )

TS = 1657323346
SECRETS = ["MY_SECRET", "clé-日本-🔑", "whsec_bXlzZWNyZXQ=", " spaced secret "]
BODIES = [
    b'{"id":"evt_1","type":"invoice.paid","data":{}}',
    '{"id":"evt_é","type":"refund.paid","data":{"note":"café 日本 🎉"}}'.encode(),
    '{"id":"evt_2","type":"payout.paid","data":{"payee":"Müller & Søn","emoji":"👩‍💻"}}'.encode(),
    b'{"id":"evt_3","type":"invoice.created","data":{"lines":[1,2,3]}}\n',
    b"{}",
]

# The guide's check, kept as close to its sample as the sample allows (it passes the Hmac
# object where the digest is meant: .digest('hex') is what it means).
GUIDE_CHECK = r"""
const crypto = require('crypto');
function expectedSignature(secret, requestTimestamp, requestBody) {
  const hmac = crypto.createHmac('sha256', secret)
    .update(`${requestTimestamp}:${requestBody}`).digest('hex');
  return `t=${requestTimestamp},v1=${hmac}`;
}
"""

BATCH = (
    GUIDE_CHECK
    + r"""
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const results = JSON.parse(input).map((c) => {
    const requestBody = Buffer.from(c.body_b64, 'base64');   // what bodyParser.raw gives
    const expected = expectedSignature(c.secret, c.timestamp, requestBody);
    return { accepted: c.signature === expected, node_signature: expected };
  });
  process.stdout.write(JSON.stringify(results));
});
"""
)

SERVER = (
    GUIDE_CHECK
    + r"""
const http = require('http');
const SECRET = process.env.ASCEND_SECRET;
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const requestBody = Buffer.concat(chunks);
    const requestTimestamp = req.headers['x-ascend-request-timestamp'];
    const requestSignature = req.headers['x-ascend-signature'];
    const expected = expectedSignature(SECRET, requestTimestamp, requestBody);
    if (req.method === 'POST' && requestSignature === expected) {
      const event = JSON.parse(requestBody);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ received: event.id, type: event.type }));
    } else {
      res.writeHead(401, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: 'bad signature' }));
    }
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(server.address().port + '\n');
});
"""
)


def run_node_batch(tmp_path: Path, cases: list[dict[str, object]]) -> list[dict[str, object]]:
    script = tmp_path / "guide_check.js"
    script.write_text(BATCH, encoding="utf-8")
    result = subprocess.run(
        [NODE or "node", str(script)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers: list[dict[str, object]] = json.loads(result.stdout)
    return answers


def case(body: bytes, secret: str, signature: str, timestamp: int = TS) -> dict[str, object]:
    return {
        "body_b64": base64.b64encode(body).decode(),
        "secret": secret,
        "timestamp": str(timestamp),
        "signature": signature,
    }


def test_the_guide_check_accepts_what_sign_produces(tmp_path: Path) -> None:
    pairs = [(body, secret) for body in BODIES for secret in SECRETS]
    cases = [
        case(body, secret, sign(body, secret, TS)["X-Ascend-Signature"]) for body, secret in pairs
    ]
    answers = run_node_batch(tmp_path, cases)
    assert [answer["accepted"] for answer in answers] == [True] * len(pairs)


def test_the_guide_check_refuses_tampering(tmp_path: Path) -> None:
    good = sign(BODIES[1], SECRETS[1], TS)["X-Ascend-Signature"]
    cases = [
        case(BODIES[1] + b" ", SECRETS[1], good),
        case(BODIES[1], SECRETS[0], good),
        case(BODIES[1], SECRETS[1], good, timestamp=TS + 1),
    ]
    assert [answer["accepted"] for answer in run_node_batch(tmp_path, cases)] == [False] * 3


def test_verify_accepts_what_node_signs(tmp_path: Path) -> None:
    pairs = [(body, secret) for body in BODIES for secret in SECRETS]
    answers = run_node_batch(tmp_path, [case(body, secret, "") for body, secret in pairs])
    for (body, secret), answer in zip(pairs, answers, strict=True):
        node_signature = str(answer["node_signature"])
        assert node_signature == sign(body, secret, TS)["X-Ascend-Signature"]
        headers = {"X-Ascend-Signature": node_signature, "X-Ascend-Request-Timestamp": str(TS)}
        try:
            event = verify(body, headers, secret, now=TS)
        except SignatureVerificationError:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"verify() refused Node's signature for {body!r}")
        except InvalidPayloadError:  # "{}" is signed fine but is not an event
            assert body == b"{}"
            continue
        assert event.raw == body
        with pytest.raises(SignatureVerificationError):
            verify(body, headers, secret + "x", now=TS)


@pytest.fixture
def node_receiver(tmp_path: Path) -> Iterator[int]:
    script = tmp_path / "receiver.js"
    script.write_text(SERVER, encoding="utf-8")
    process = subprocess.Popen(
        [NODE or "node", str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ASCEND_SECRET": SECRETS[1]},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield port
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST", "/webhook-listener", body, {"Content-Type": "application/json", **headers}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("body", BODIES[:4])
def test_a_node_receiver_written_like_the_guide_answers_200(
    node_receiver: int, body: bytes
) -> None:
    status, answer = post(node_receiver, body, sign(body, SECRETS[1]))
    assert status == 200
    assert answer["received"] == json.loads(body)["id"]


def test_a_node_receiver_written_like_the_guide_refuses_forgeries(node_receiver: int) -> None:
    body = BODIES[1]
    signed = sign(body, SECRETS[1])
    assert post(node_receiver, body + b" ", signed)[0] == 401
    assert post(node_receiver, body, sign(body, "clé-日本"))[0] == 401
    stamp = str(int(signed["X-Ascend-Request-Timestamp"]) + 1)
    assert post(node_receiver, body, {**signed, "X-Ascend-Request-Timestamp": stamp})[0] == 401
    assert post(node_receiver, body, signed)[0] == 200
