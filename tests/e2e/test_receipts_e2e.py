"""Early and late delivery receipts through the real services.

Early: a receipt that reaches reports before the message's submission is recorded. Here it
happens the way it does in production: the gateway (the simulator's Twilio face, slowed down)
takes the message but answers after the dispatcher's timeout, so the dispatcher does not know
the gateway's id; the gateway's status callbacks reach ingest and reports at once, which parks
them in ``pending_receipts``; the dispatcher's reconciler later finds the message at the
gateway (never sending it twice), publishes the submission, and reports applies the parked
receipts then.

Late: a receipt that comes long after the submission, and after the message's validity ended
(nothing expires a message that was sent), still makes it delivered; a contradicting receipt
for a message that is already final lands in the timeline but does not change its status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from herald_tools.stack import Ports, Stack
from shared.signatures import HEADER, sign
from tests.conftest import Tenant, make_tenant
from tests.helpers import running, wait_for

pytestmark = pytest.mark.e2e

ACCOUNT = "AC" + "0" * 32
TWILIO_TOKEN = "sim-twilio-token"
SIM = {"Authorization": "Bearer sim-token"}


@pytest.fixture(scope="module")
def receipts_stack(env, tmp_path_factory) -> Iterator[Stack]:
    """Spanish numbers go through a Twilio gateway (the simulator's Twilio face) that gives up
    after 1 s; the rest through the simulator's JSON API. Every receipt says delivered."""
    ports = Ports.random()
    gateways = [
        {"name": "tw", "kind": "twilio", "account_sid": ACCOUNT, "auth_token": TWILIO_TOKEN,
         "base_url": f"http://127.0.0.1:{ports.simulator}", "from_number": "+15005550006",
         "status_callback_url": f"http://127.0.0.1:{ports.ingest}/v1/callbacks/twilio/tw/status",
         "timeout_s": 1.0, "rate_per_s": 1000},
        {"name": "sim", "kind": "herald-http", "url": f"http://127.0.0.1:{ports.simulator}", "api_token": "sim-token",
         "rate_per_s": 1000},
    ]
    routes = [{"name": "spain", "prefixes": ["+34"], "gateways": ["tw"]}, {"name": "rest", "gateways": ["sim"]}]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             # a second final receipt for a settled message waits this long for a newer submission of its id
             "HERALD_RECEIPT_SETTLED_WAIT_S": "3",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_ROUTES": json.dumps(routes),
             "HERALD_TWILIO_AUTH_TOKENS": json.dumps({"tw": TWILIO_TOKEN}),
             "HERALD_PUBLIC_URL": f"http://127.0.0.1:{ports.ingest}",
             "HERALD_SIM_TWILIO_ACCOUNT_SID": ACCOUNT, "HERALD_SIM_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
             "HERALD_SIM_DELIVERED_RATE": "1", "HERALD_SIM_UNDELIVERED_RATE": "0", "HERALD_SIM_FAILED_RATE": "0",
             "HERALD_SIM_RECEIPT_DELAY_MIN_MS": "50", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200"},
        ports=ports,
        log_dir=Path(tmp_path_factory.mktemp("receipts-logs")),
    )
    with running(stack):
        yield stack


def control(stack: Stack, body: dict[str, Any]) -> None:
    httpx.post(f"http://127.0.0.1:{stack.ports.simulator_control}/control", json=body).raise_for_status()


def at_gateway(stack: Stack, message_id: str) -> list[dict[str, Any]]:
    """What the simulator (any face) recorded for this Herald message id."""
    r = httpx.get(f"{stack.url('simulator')}/v1/sms", params={"client_ref": message_id}, headers=SIM)
    r.raise_for_status()
    return r.json()["messages"]


async def send(stack: Stack, tenant: Tenant, to: str, **extra: Any) -> str:
    body = {"to": to, "body": f"Your code is {uuid.uuid4().int % 10**6:06d}", "type": "transactional", **extra}
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers) as client:
        r = await client.post("/v1/messages", json=body)
    assert r.status_code == 202, r.text
    return r.json()["message_id"]


async def view(stack: Stack, tenant: Tenant, message_id: str) -> dict[str, Any]:
    """The message's status and timeline from reports' API."""
    async with httpx.AsyncClient(base_url=stack.url("reports"), headers=tenant.headers) as client:
        r = await client.get(f"/v1/messages/{message_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def status_is(pool, message_id: str, status: str, timeout_s: float) -> None:
    async def check():
        return await pool.fetchval("SELECT status FROM messages WHERE message_id = $1::uuid", message_id) == status

    await wait_for(check, timeout_s=timeout_s, interval_s=0.2)


def unparked_total(stack: Stack) -> float:
    text = httpx.get(f"{stack.ops_url('reports')}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("herald_receipts_unparked_total"))


async def test_an_early_receipt_is_parked_then_applied_when_the_submission_is_known(receipts_stack: Stack, pool) -> None:
    stack = receipts_stack
    tenant = await make_tenant(pool)
    unparked_before = unparked_total(stack)
    control(stack, {"mode": "slow", "delay_ms": 2500})  # Twilio takes the message, answers after 2.5 s
    try:
        message_id = await send(stack, tenant, f"+3461{uuid.uuid4().int % 10**7:07d}")
        recorded = await wait_for(lambda: asyncio.to_thread(at_gateway, stack, message_id), timeout_s=20)
    finally:
        control(stack, {"mode": "normal"})
    (submission,) = recorded
    sid = submission["id"]
    assert sid.startswith("SM")

    # The gateway's callbacks (sent, delivered) reach reports while Herald does not know the sid yet.
    async def parked():
        rows = await pool.fetch("SELECT receipt FROM pending_receipts WHERE gateway = 'tw' AND gateway_message_id = $1", sid)
        return rows if {r["receipt"]["status"] for r in rows} == {"enroute", "delivered"} else None

    rows = await wait_for(parked, timeout_s=20)
    assert all(r["receipt"]["client_ref"] == message_id for r in rows)
    row = await pool.fetchrow("SELECT status, gateway_message_id, final_at FROM messages WHERE message_id = $1::uuid",
                              message_id)
    assert (row["status"], row["gateway_message_id"], row["final_at"]) == ("accepted", None, None)
    claim = await pool.fetchrow("SELECT state, owner, gateway_message_id FROM dispatch_claims WHERE message_id = $1::uuid",
                                message_id)
    assert (claim["state"], claim["owner"], claim["gateway_message_id"]) == ("claimed", "reconciler", None)

    # The reconciler finds the message at the gateway; the submission lets reports apply them.
    await status_is(pool, message_id, "delivered", timeout_s=45)
    found = await view(stack, tenant, message_id)
    assert (found["gateway"], found["gateway_message_id"], found["reason_code"]) == ("tw", sid, None)
    assert found["submitted_at"] is not None and found["final_at"] is not None
    timeline = sorted(e["status"] for e in found["timeline"])
    assert timeline == ["accepted", "delivered", "receipt_enroute", "submitted"], found["timeline"]
    submitted = next(e for e in found["timeline"] if e["status"] == "submitted")
    delivered = next(e for e in found["timeline"] if e["status"] == "delivered")
    assert submitted["detail"]["gateway_message_id"] == delivered["detail"]["gateway_message_id"] == sid
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway_message_id = $1", sid) == 0
    assert len(at_gateway(stack, message_id)) == 1  # looked up, not sent again
    assert unparked_total(stack) - unparked_before >= 2


async def test_late_receipts_after_validity_and_after_the_final_status(receipts_stack: Stack, pool) -> None:
    stack = receipts_stack
    tenant = await make_tenant(pool)
    control(stack, {"receipt_delay_ms": [9000, 9000]})  # for the submissions from now on
    try:
        message_id = await send(stack, tenant, f"+3362{uuid.uuid4().int % 10**7:07d}", validity_s=4)
        await status_is(pool, message_id, "submitted", timeout_s=20)
    finally:
        control(stack, {"receipt_delay_ms": [50, 200]})
    (submission,) = at_gateway(stack, message_id)
    row = await pool.fetchrow("SELECT accepted_at, submitted_at FROM messages WHERE message_id = $1::uuid", message_id)
    expires_at = row["accepted_at"] + timedelta(seconds=4)

    # The validity ends while the receipt is on its way: the message was sent, so it stays submitted.
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 1.5)
    row = await pool.fetchrow("SELECT status, final_at FROM messages WHERE message_id = $1::uuid", message_id)
    assert (row["status"], row["final_at"]) == ("submitted", None)

    # The receipt, 9 s after the submission: applied.
    await status_is(pool, message_id, "delivered", timeout_s=30)
    found = await view(stack, tenant, message_id)
    final_at = datetime.fromisoformat(found["final_at"])
    submitted_at = datetime.fromisoformat(found["submitted_at"])
    assert (found["gateway"], found["gateway_message_id"], found["reason_code"]) == ("sim", submission["id"], None)
    assert final_at > expires_at and final_at - submitted_at >= timedelta(seconds=8)
    assert [e["status"] for e in found["timeline"]] == ["accepted", "submitted", "delivered"]

    # The gateway then reports the message undelivered (twice): recorded once in the timeline,
    # the first final status stays.
    late = {"receipts": [{"id": submission["id"], "client_ref": message_id, "status": "undelivered",
                          "error_code": "1", "done_at": datetime.now(UTC).isoformat()}]}
    raw = json.dumps(late).encode()
    async with httpx.AsyncClient(base_url=stack.url("ingest")) as client:
        for _ in range(2):
            r = await client.post("/v1/receipts/sim", content=raw, headers={
                "content-type": "application/json", HEADER: sign(stack.receipt_secret.encode(), raw, int(time.time()), context="sim")})
            assert (r.status_code, r.json()["accepted"]) == (200, 1), r.text

    async def recorded():
        found = await view(stack, tenant, message_id)
        return found if len(found["timeline"]) > 3 else None

    found = await wait_for(recorded, timeout_s=20)
    await asyncio.sleep(1)  # the second copy, if it were recorded, would be there by now
    found = await view(stack, tenant, message_id)
    assert [e["status"] for e in found["timeline"]] == ["accepted", "submitted", "delivered", "undelivered"]
    assert found["timeline"][-1]["detail"]["receipt"] == "undelivered"
    assert (found["status"], found["reason_code"], datetime.fromisoformat(found["final_at"])) == (
        "delivered", None, final_at)
