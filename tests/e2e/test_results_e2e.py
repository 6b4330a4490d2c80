"""Results through the real services over SMPP: a marketing message's URL goes out as a short
link, following it redirects and the click shows in the campaign report, a conversion is
attributed to the clicked message, and a concatenated message's per-part receipts (drawn
independently by the simulator) decide its status: delivered only when every part is."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Ports, Stack, free_port
from services.ingest.links import records, track_message
from services.ingest.links_repo import LinksRepository
from services.ingest.service import accepted_event
from shared.contracts import ContactEventAccepted, ContactEventAcceptedEvent, MessageAccepted, utcnow
from shared.phones import parse_e164
from shared.sms.encoding import analyse
from shared.topics import CONTACT_EVENTS
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, send_batches
from tests.helpers import produce_raw, running, wait_for

pytestmark = pytest.mark.e2e

DOMAIN = "go.herald.test"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


@pytest.fixture(scope="module")
def results_stack(env, tmp_path_factory) -> Iterator[Stack]:
    smpp_port = free_port()
    gateways = [
        {"name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
         "password": "sim-pass", "binds": 1, "window": 20, "rate_per_s": 2000, "send_message_id_tlv": True,
         "reconnect_min_s": 0.2, "reconnect_max_s": 2}
    ]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_SIM_SMPP_PORT": str(smpp_port),
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200", "HERALD_SIM_SMPP_PART_OUTCOMES": "independent",
             "HERALD_SIM_DELIVERED_RATE": "0.8", "HERALD_SIM_UNDELIVERED_RATE": "0.15",
             "HERALD_SIM_FAILED_RATE": "0.05", "HERALD_LINK_DOMAIN": DOMAIN},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("results-logs")),
    )
    with running(stack):
        yield stack


async def opt_out_tenant(pool):
    tenant = await make_tenant(pool)
    await pool.execute("UPDATE tenants SET marketing_consent = 'opt_out' WHERE tenant_id = $1", tenant.tenant_id)
    return tenant


def sent_text(stack: Stack, message_id: str) -> str:
    control = f"http://127.0.0.1:{stack.ports.simulator_control}"
    arrived = httpx.get(f"{control}/stats/smpp/messages", params={"client_ref": message_id}).json()["messages"]
    assert arrived, f"the simulator got nothing for {message_id}"
    return arrived[0]["body"]


async def test_short_link_click_conversion_and_campaign_report(results_stack: Stack, pool, env) -> None:
    tenant = await opt_out_tenant(pool)
    other = await make_tenant(pool)
    number_a, number_b, number_api = demo_numbers(3, seed=4242, countries=marketing_countries(True))

    # 1. Through the API: the URL is rewritten before segments are counted.
    url = ("https://shop.example.com/spring-collection/womens/dresses?utm_source=sms&utm_medium=text"
           "&utm_campaign=spring-2026&utm_content=variant-a")
    body = f"Spring sale, 20% off: {url} today. STOP to opt out"
    assert analyse(body).segments == 2
    (api_id,) = await send_batches(results_stack, tenant, [{"to": number_api, "body": body, "type": "marketing"}])

    # 2. As the campaign launcher does it: rewrite, store the links in one round trip, publish.
    campaign = uuid.uuid4()
    variants = [{"name": "A", "template_id": str(uuid.uuid4()), "percent": 50},
                {"name": "B", "template_id": str(uuid.uuid4()), "percent": 50}]
    await pool.execute(
        # fanned out already (this test publishes its messages): the launcher must not claim it
        "INSERT INTO campaigns (tenant_id, campaign_id, name, segment_filter, variants, state, launched_at, fanned_out_at)"
        " VALUES ($1, $2, 'Spring', 'true', $3, 'running', now(), now())",
        tenant.tenant_id, campaign, variants,
    )
    launched = []
    link_rows = []
    for number, variant in ((number_a, "A"), (number_b, "B")):
        phone = parse_e164(number)
        info = analyse(f"Hi! Variant {variant}: https://shop.example.com/{variant.lower()}")
        message = MessageAccepted(
            message_id=uuid.uuid4(), to=phone.e164, country=phone.country, body=info.text, type="marketing",
            encoding=info.encoding, segments=info.segments, source="kafka", accepted_at=utcnow(),
            contact_id=uuid.uuid4(), campaign_id=campaign, variant=variant,
        )
        message, links = track_message(message, DOMAIN, smart=True)
        link_rows += records(tenant.tenant_id, message, links)
        launched.append(message)
    await LinksRepository(pool).store_many(link_rows)
    outgoing = [accepted_event(tenant.tenant_id, m, "e2e") for m in launched]
    await produce_raw(env.bootstrap, outgoing[0].topic.name(env.prefix),
                      [(o.key.encode(), o.event.model_dump_json().encode()) for o in outgoing])

    ids = [api_id, *(str(m.message_id) for m in launched)]
    await all_final(pool, ids, timeout_s=120)
    rows = await pool.fetch("SELECT status, reason_code, reason FROM messages WHERE message_id = ANY($1::uuid[])", ids)
    # every final status came from a receipt (a simulated carrier may also answer REJECTD or EXPIRED)
    assert all(r["status"] in ("delivered", "undelivered", "failed")
               and (r["reason_code"] is None or r["reason_code"].startswith("receipt_")) for r in rows), [dict(r) for r in rows]
    text = sent_text(results_stack, api_id)
    assert re.fullmatch(rf"Spring sale, 20% off: https://{re.escape(DOMAIN)}/[0-9A-Za-z]{{10}} today\. STOP to opt out", text), text
    row = await pool.fetchrow("SELECT segments FROM messages WHERE message_id = $1::uuid", api_id)
    assert row["segments"] == analyse(text).segments == 1  # measured after the rewrite: 2 before it
    code_a = sent_text(results_stack, str(launched[0].message_id)).rsplit("/", 1)[1]

    # 3. Follow the link: a person (after the message went out), and a link preview.
    submitted = await pool.fetchval("SELECT submitted_at FROM messages WHERE message_id = $1", launched[0].message_id)
    await asyncio.sleep(max(0.0, 1.2 - (utcnow() - submitted).total_seconds()))
    async with httpx.AsyncClient(base_url=results_stack.url("ingest")) as client:
        r = await client.get(f"/l/{code_a}", headers={"user-agent": IPHONE})
        assert (r.status_code, r.headers["location"]) == (302, "https://shop.example.com/a")
        r = await client.get(f"/l/{code_a}", headers={"user-agent": "facebookexternalhit/1.1"})
        assert r.status_code == 302
        r = await client.get("/l/ZZZZZZZZZZ")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "link_not_found")

    async def two_clicks():
        rows = await pool.fetch("SELECT bot, bot_reason FROM clicks WHERE message_id = $1 ORDER BY clicked_at",
                                launched[0].message_id)
        bots = await pool.fetch("SELECT reason, clicks FROM bot_clicks WHERE message_id = $1", launched[0].message_id)
        return (rows, bots) if len(rows) == 1 and bots else None

    # the person's click is a row; the preview fetch is counted (bot_clicks), not stored
    clicks, bots = await wait_for(two_clicks, timeout_s=30)
    assert [(c["bot"], c["bot_reason"]) for c in clicks] == [(False, None)]
    assert [(b["reason"], b["clicks"]) for b in bots] == [("preview_agent", 1)]

    # 4. An order from the person who clicked: attributed to the clicked message.
    event = ContactEventAccepted(
        event_id=uuid.uuid4(), name="order.completed", phone=launched[0].to, occurred_at=utcnow(),
        received_at=utcnow(), value=Decimal("59.90"), currency="EUR", source="api",
    )
    envelope = ContactEventAcceptedEvent(tenant=tenant.tenant_id, payload=event)
    await produce_raw(env.bootstrap, CONTACT_EVENTS.name(env.prefix),
                      [(launched[0].to.encode(), envelope.model_dump_json().encode())] * 2)  # twice: counted once

    async def attributed():
        return await pool.fetchrow("SELECT * FROM conversions WHERE tenant_id = $1 AND event_id = $2",
                                   tenant.tenant_id, event.event_id)

    conversion = await wait_for(attributed, timeout_s=30)
    assert (conversion["attribution"], conversion["message_id"], conversion["variant"]) == (
        "click", launched[0].message_id, "A")

    # 5. The campaign report.
    async with httpx.AsyncClient(base_url=results_stack.url("reports")) as client:
        r = await client.get(f"/v1/campaigns/{campaign}/report", headers=tenant.headers)
        assert r.status_code == 200, r.text
        report = r.json()
        r = await client.get(f"/v1/campaigns/{campaign}/report", headers=other.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "campaign_not_found")
    a, b = report["variants"]
    assert (a["variant"], a["targeted"], a["sent"], a["clicks_unique"], a["clicks_total"], a["bot_clicks"]) == (
        "A", 1, 1, 1, 1, 1)
    assert (a["conversions"], a["revenue"]) == (1, {"EUR": "59.9000"})
    assert (b["variant"], b["targeted"], b["clicks_total"], b["conversions"]) == ("B", 1, 0, 0)
    assert report["totals"]["segments"] == 2 and report["ab_test"]["metric"] == "click_rate"


async def test_multipart_receipts_aggregate_per_part(results_stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    numbers = demo_numbers(40, seed=77)
    long_text = "Your order has shipped and will arrive soon. " * 8  # 360 GSM-7 characters: 3 parts
    assert analyse(long_text).segments == 3
    ids = await send_batches(results_stack, tenant, [{"to": n, "body": long_text} for n in numbers])
    await all_final(pool, ids, timeout_s=120)

    async def settled():  # every part's receipt recorded (late ones land after the final status)
        rows = await pool.fetch(
            "SELECT message_id, status, part_ids, part_status FROM messages WHERE message_id = ANY($1::uuid[])", ids
        )
        return rows if all(r["part_ids"] and len(r["part_status"] or {}) == 3 for r in rows) else None

    rows = await wait_for(settled, timeout_s=60)
    kinds = set()
    for row in rows:
        parts = [row["part_status"][p]["status"] for p in row["part_ids"]]
        assert len(row["part_ids"]) == 3
        if row["status"] == "delivered":
            assert parts == ["delivered"] * 3
        else:
            assert row["status"] in ("undelivered", "failed", "expired") and set(parts) != {"delivered"}
        kinds.add(row["status"] == "delivered")
    assert kinds == {True, False}  # with independent part outcomes, both happen in 40 messages
    timeline = await pool.fetch(
        "SELECT status, count(*) AS n FROM message_events WHERE message_id = ANY($1::uuid[])"
        " AND status IN ('delivered', 'undelivered', 'failed', 'expired') GROUP BY status", ids,
    )
    finals = sum(r["n"] for r in timeline)
    assert finals == len(ids)  # one final entry each; the other part receipts show as part_<status>
