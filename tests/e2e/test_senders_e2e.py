"""The sender registry through the real services, over SMPP (docs/senders.md): a tenant cannot send
from another tenant's sender (422 with the reason, the trigger topic's record to the rejected
topic), an unverified sender is refused until `herald admin sender verify`, a Spanish alphanumeric
sender reaches the SMSC as the source address, and replies to a registered number still reach
the tenant that owns it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools import admin
from herald_tools.stack import Ports, Stack, free_port
from shared.contracts import MessageRequest, TriggerEvent
from shared.topics import REJECTED, TRIGGERS
from tests.conftest import make_tenant, register_senders
from tests.e2e.test_replies_e2e import reply
from tests.helpers import produce_raw, read_topic, rejected_events, running, signed, wait_for

pytestmark = pytest.mark.e2e

ES = "+34612345678"


@pytest.fixture(scope="module")
def smpp_stack(env, tmp_path_factory) -> Iterator[Stack]:
    smpp_port = free_port()
    gateways = [
        {"name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
         "password": "sim-pass", "binds": 1, "window": 10, "rate_per_s": 500, "send_message_id_tlv": True,
         "default_sender": "Herald", "reconnect_min_s": 0.2, "reconnect_max_s": 2,
         "registration_tlvs": {"dlt_entity_id": 0x1401, "ten_dlc_brand_id": 0x1402, "ten_dlc_campaign_id": 0x1403,
                               "dlt_template_id": 0x1404}}
    ]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_SIM_SMPP_PORT": str(smpp_port),
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("senders-logs")),
    )
    with running(stack):
        yield stack


def madrid() -> str:
    return f"+3491{random.randrange(10**6, 10**7)}"


async def seen_by_smsc(stack: Stack, message_id: str) -> dict:
    """What the simulator's SMPP face received for this message."""
    control = f"http://127.0.0.1:{stack.ports.simulator_control}"

    async def check():
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{control}/stats/smpp/messages", params={"client_ref": message_id})
        return r.json()["messages"] if r.status_code == 200 and r.json()["messages"] else None

    (seen,) = await wait_for(check, timeout_s=60, interval_s=0.3)
    return seen


async def test_senders_through_the_pipeline(smpp_stack: Stack, pool, env) -> None:
    a, b = await make_tenant(pool), await make_tenant(pool)
    await register_senders(pool, a.tenant_id, "Acme", countries=["ES"])
    b_number = madrid()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "e2e", b.tenant_id, b_number)  # B's number: B sends from it and gets its replies

    async with httpx.AsyncClient(base_url=smpp_stack.url("ingest"), headers=a.headers, timeout=30) as api:
        # A Spanish alphanumeric sender goes out as such: the SMSC sees it as the source address
        # with its validity: the SMSC gets the time it has left as a relative validity_period
        r = await api.post("/v1/messages", json={"to": ES, "body": "Your code is 123456", "sender": "Acme",
                                                 "validity_s": 600})
        assert r.status_code == 202, r.text
        seen = await seen_by_smsc(smpp_stack, r.json()["message_id"])
        assert seen["from"] == "Acme"
        vp = seen["validity_period"]  # YYMMDDhhmmsstnnR: relative, 0 days, under 10 minutes left
        assert vp.endswith("000R") and vp.startswith("00000000") and 540 <= int(vp[8:10]) * 60 + int(vp[10:12]) <= 600, vp

        # A cannot use B's number
        r = await api.post("/v1/messages", json={"to": ES, "body": "hi", "sender": b_number})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_not_registered"), r.text
        r = await api.post("/v1/messages/batch", json={"messages": [{"to": ES, "body": "x", "sender": b_number}]})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "all_rejected"), r.text
        assert r.json()["error"]["details"][0]["code"] == "sender_not_registered"

        # a requested sender is pending: refused until an operator verifies it (the CLI, another process)
        r = await api.post("/v1/senders", json={"sender": "AcmeDeals", "countries": ["ES"]})
        assert r.status_code == 201 and r.json()["state"] == "pending", r.text
        r = await api.post("/v1/messages", json={"to": ES, "body": "hi", "sender": "AcmeDeals"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_not_verified"), r.text
        cli = subprocess.run(
            [sys.executable, "-m", "herald_tools.cli", "admin", "sender", "verify", a.tenant_id, "AcmeDeals", "--note", "brand checked"],
            env={**os.environ, **env.vars()}, capture_output=True, text=True, timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["state"] == "verified"
        r = await api.post("/v1/messages", json={"to": ES, "body": "hi", "sender": "AcmeDeals"})
        assert r.status_code == 202, r.text
        assert (await seen_by_smsc(smpp_stack, r.json()["message_id"]))["from"] == "AcmeDeals"

    # the trigger topic: A's request naming B's number goes to the rejected topic with the reason
    marker = uuid.uuid4().hex[:10]

    def trigger(sender: str) -> bytes:
        request = MessageRequest(to=ES, body="Your order has shipped", sender=sender, metadata={"marker": marker})
        return TriggerEvent(tenant=a.tenant_id, payload=request).model_dump_json().encode()

    await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), await signed(pool, a.tenant_id, [
        (marker.encode(), trigger(b_number)), (marker.encode(), trigger("Acme"))]))
    rejected = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                                lambda rs: any(e.payload.key == marker for e in rejected_events(rs)), timeout_s=60)
    (mine,) = [e for e in rejected_events(rejected) if e.payload.key == marker]
    assert (mine.payload.reason_code, mine.tenant) == ("sender_not_registered", a.tenant_id)

    async def accepted() -> list:
        return await pool.fetch("SELECT sender FROM messages WHERE tenant_id = $1 AND metadata->>'marker' = $2",
                                a.tenant_id, marker)

    assert [r["sender"] for r in await wait_for(accepted, timeout_s=60)] == ["Acme"]

    # registrations: an Indian message carries its DLT entity id, a US one from a 10DLC number its
    # brand and campaign ids, in the TLVs the gateway names; without them they are refused
    us_number = f"+1201{random.randrange(2_000_000, 10_000_000)}"
    await register_senders(pool, a.tenant_id, "AcmeIN", countries=["IN"])
    await register_senders(pool, a.tenant_id, us_number, countries=["US"])
    async with httpx.AsyncClient(base_url=smpp_stack.url("ingest"), headers=a.headers, timeout=30) as api:
        india = {"to": "+919812345678", "body": "Your OTP is 1234", "sender": "AcmeIN"}
        us = {"to": "+12025550143", "body": "Your code is 5678", "sender": us_number}
        r = await api.post("/v1/messages", json=india)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_registration_missing"), r.text
        r = await api.post("/v1/messages", json=us)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_registration_missing"), r.text
        async with pool.acquire() as conn:
            await admin.sender_register(conn, "e2e", a.tenant_id, "AcmeIN", {"dlt": {"entity_id": "1101000000001"}})
            await admin.sender_register(conn, "e2e", a.tenant_id, us_number,
                                        {"ten_dlc": {"brand_id": "BRAND1", "campaign_id": "CAMP1"}})
        r = await api.post("/v1/messages", json=india)
        assert r.status_code == 202, r.text
        seen = await seen_by_smsc(smpp_stack, r.json()["message_id"])
        assert (seen["from"], seen["vendor_tlvs"]) == ("AcmeIN", {"0x1401": "1101000000001"})
        # by a template registered on DLT: the template id goes with the entity id
        r = await api.post("/v1/templates", json={"name": "otp-in", "purpose": "transactional", "default_language": "en",
                                                  "sender": "AcmeIN", "dlt_template_id": "1107000000000042",
                                                  "variants": {"en": "Your OTP is {{values.code}}"}})
        assert r.status_code == 201, r.text
        r = await api.post("/v1/messages", json={"to": "+919812345678", "template_id": r.json()["template_id"],
                                                 "values": {"code": "4321"}})
        assert r.status_code == 202, r.text
        seen = await seen_by_smsc(smpp_stack, r.json()["message_id"])
        assert (seen["body"], seen["vendor_tlvs"]) == ("Your OTP is 4321", {"0x1401": "1101000000001", "0x1404": "1107000000000042"})
        r = await api.post("/v1/messages", json=us)
        assert r.status_code == 202, r.text
        seen = await seen_by_smsc(smpp_stack, r.json()["message_id"])
        assert (seen["from"], seen["vendor_tlvs"]) == (us_number.lstrip("+"), {"0x1402": "BRAND1", "0x1403": "CAMP1"})

    # replies to B's registered number reach B, through the same registry
    handset = "+34699111222"
    event = await reply(smpp_stack, handset, b_number, "Is the shop open?")

    async def recorded():
        return await pool.fetchval("SELECT tenant_id FROM inbound_messages WHERE event_id = $1", event.event_id)

    assert await wait_for(recorded, timeout_s=60) == b.tenant_id
