"""Receipts matched to submissions when the gateway reuses its message ids (reports' handler on
the real PostgreSQL): the most recent submission of the id within the window takes the receipt,
a settled submission takes no other receipt (parked until the newer one is recorded), a late
receipt for the older submission still reaches it, a submission whose event was published after
its receipt still gets it, a contradicting second final receipt for a settled message ends in its
timeline after the settled wait, a receipt older than the window matches nothing, and parked
receipts are capped per gateway."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from services.reports.handlers import PendingSweeper, StatusHandler
from shared.contracts import (
    DeliveryReceipt,
    MessageAccepted,
    MessageAcceptedEvent,
    MessageStatusChanged,
    MessageStatusEvent,
    utcnow,
)
from shared.kafka import Incoming
from shared.statuses import ReceiptStatus, Status
from shared.topics import ACCEPTED, RECEIPTS, STATUS
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration


def incoming(topic, event) -> Incoming:
    return Incoming(topic, event, None)  # handlers never read the record


class Gateway:
    """Events as the dispatcher publishes them for one SMSC whose ids are reused."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.name = f"smsc-{uuid.uuid4().hex[:6]}"

    def accepted(self, at: datetime) -> tuple[uuid.UUID, Incoming]:
        m = MessageAccepted(message_id=uuid.uuid4(), to="+34600000001", country="ES", body="x", type="transactional",
                            encoding="GSM-7", segments=1, source="api", accepted_at=at)
        return m.message_id, incoming(ACCEPTED, MessageAcceptedEvent(tenant=self.tenant, payload=m, occurred_at=at))

    def submitted(self, message_id: uuid.UUID, gateway_id: str, at: datetime) -> Incoming:
        payload = MessageStatusChanged(message_id=message_id, status=Status.SUBMITTED, gateway=self.name,
                                       gateway_message_id=gateway_id, gateway_part_ids=[gateway_id], attempts=1)
        return incoming(STATUS, MessageStatusEvent(tenant=self.tenant, payload=payload, occurred_at=at))

    def receipt(self, gateway_id: str, status: ReceiptStatus, at: datetime, fingerprint: str) -> Incoming:
        r = DeliveryReceipt(gateway=self.name, gateway_message_id=gateway_id, status=status, done_at=at,
                            fingerprint=fingerprint)
        from shared.events import receipt_event

        return incoming(RECEIPTS, receipt_event(r).event.model_copy(update={"occurred_at": at}))


async def states(pool, *ids: uuid.UUID) -> list[str]:
    rows = await pool.fetch("SELECT message_id, status FROM messages WHERE message_id = ANY($1::uuid[])", list(ids))
    by_id = {r["message_id"]: r["status"] for r in rows}
    return [by_id[i] for i in ids]


async def finals(pool, message_id: uuid.UUID) -> list[str]:
    rows = await pool.fetch(
        "SELECT status FROM message_events WHERE message_id = $1 AND detail ? 'receipt' ORDER BY occurred_at", message_id
    )
    return [r["status"] for r in rows]


async def test_a_reused_id_takes_the_receipt_to_the_most_recent_submission(pool) -> None:
    gw = Gateway((await make_tenant(pool)).tenant_id)
    handler = StatusHandler(pool)
    t0 = utcnow() - timedelta(hours=2)
    a, acc_a = gw.accepted(t0)
    b, acc_b = gw.accepted(t0 + timedelta(hours=1))
    await handler([acc_a, gw.submitted(a, "1", t0)])
    await handler([gw.receipt("1", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=2), "fa")])
    assert await states(pool, a) == ["delivered"]
    # the SMSC restarted: id 1 again, for another message
    await handler([acc_b, gw.submitted(b, "1", t0 + timedelta(hours=1))])
    await handler([gw.receipt("1", ReceiptStatus.UNDELIVERED, t0 + timedelta(hours=1, seconds=2), "fb")])
    assert await states(pool, a, b) == ["delivered", "undelivered"]
    assert await finals(pool, a) == ["delivered"] and await finals(pool, b) == ["undelivered"]


async def test_a_receipt_before_its_submission_waits_for_it_even_with_an_older_submission_of_the_id(pool) -> None:
    gw = Gateway((await make_tenant(pool)).tenant_id)
    handler = StatusHandler(pool)
    t0 = utcnow() - timedelta(hours=2)
    a, acc_a = gw.accepted(t0)
    b, acc_b = gw.accepted(t0 + timedelta(hours=1))
    await handler([acc_a, acc_b, gw.submitted(a, "7", t0), gw.receipt("7", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=1), "fa")])
    # b's receipt comes before b's submission is recorded: a is settled, so it is parked, not a's
    early = gw.receipt("7", ReceiptStatus.UNDELIVERED, t0 + timedelta(hours=1, seconds=1), "fb")
    await handler([early])
    assert await states(pool, a, b) == ["delivered", "accepted"]
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway = $1", gw.name) == 1
    # the same receipt of a's again (the SMSC resent it): a redelivery, still a's, nothing new
    await handler([gw.receipt("7", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=1), "fa")])
    assert await finals(pool, a) == ["delivered"]
    await handler([gw.submitted(b, "7", t0 + timedelta(hours=1))])
    assert await states(pool, a, b) == ["delivered", "undelivered"]
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway = $1", gw.name) == 0


async def test_a_late_receipt_for_the_older_submission_still_reaches_it(pool) -> None:
    gw = Gateway((await make_tenant(pool)).tenant_id)
    handler = StatusHandler(pool)
    t0 = utcnow() - timedelta(hours=2)
    a, acc_a = gw.accepted(t0)
    b, acc_b = gw.accepted(t0)
    await handler([acc_a, acc_b, gw.submitted(a, "9", t0), gw.submitted(b, "9", t0 + timedelta(minutes=30))])
    # a's receipt was reported before b was submitted, but reports reads it only now
    await handler([gw.receipt("9", ReceiptStatus.EXPIRED, t0 + timedelta(minutes=5), "fa")])
    await handler([gw.receipt("9", ReceiptStatus.DELIVERED, t0 + timedelta(minutes=31), "fb")])
    assert await states(pool, a, b) == ["expired", "delivered"]


async def test_a_submission_published_after_its_receipt_still_gets_it(pool) -> None:
    gw = Gateway((await make_tenant(pool)).tenant_id)
    handler = StatusHandler(pool)
    t0 = utcnow() - timedelta(minutes=10)
    a, acc_a = gw.accepted(t0)
    # the dispatcher published the submission a minute after the SMSC's receipt came back
    await handler([acc_a, gw.receipt("42", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=1), "fa")])
    await handler([gw.submitted(a, "42", t0 + timedelta(minutes=1))])
    assert await states(pool, a) == ["delivered"]


async def test_a_receipt_older_than_the_window_matches_nothing_and_expires(pool) -> None:
    gw = Gateway((await make_tenant(pool)).tenant_id)
    handler = StatusHandler(pool, window=timedelta(hours=1))
    t0 = utcnow() - timedelta(days=3)
    a, acc_a = gw.accepted(t0)
    await handler([acc_a, gw.submitted(a, "5", t0)])
    await handler([gw.receipt("5", ReceiptStatus.DELIVERED, t0 + timedelta(hours=2), "fa")])
    assert await states(pool, a) == ["submitted"]
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway = $1", gw.name) == 1
    await pool.execute("UPDATE pending_receipts SET received_at = now() - interval '2 hours' WHERE gateway = $1", gw.name)
    await PendingSweeper(pool, 1.0, window=timedelta(hours=1)).sweep_once()
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway = $1", gw.name) == 0
    assert await states(pool, a) == ["submitted"]


async def test_a_second_final_receipt_for_a_settled_message_waits_then_lands_in_its_timeline(pool) -> None:
    gw = Gateway((await make_tenant(pool)).tenant_id)
    handler = StatusHandler(pool, settled_wait=timedelta(seconds=30))
    t0 = utcnow() - timedelta(minutes=5)
    a, acc_a = gw.accepted(t0)
    await handler([acc_a, gw.submitted(a, "3", t0), gw.receipt("3", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=1), "f1")])
    # the gateway then says undelivered: maybe for a newer submission of id 3, so it waits
    await handler([gw.receipt("3", ReceiptStatus.UNDELIVERED, t0 + timedelta(minutes=1), "f2")])
    assert await PendingSweeper(pool, 1.0, settled_wait=timedelta(seconds=30)).sweep_once() == 0
    assert await finals(pool, a) == ["delivered"]
    # none came within the settled wait: kept in the message's timeline, the first final status stays
    assert await PendingSweeper(pool, 1.0, settled_wait=timedelta(0)).sweep_once() == 1
    assert await finals(pool, a) == ["delivered", "undelivered"] and await states(pool, a) == ["delivered"]
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway = $1", gw.name) == 0


def dropped(gateway: str) -> float:
    return REGISTRY.get_sample_value("herald_receipts_parked_dropped_total", {"gateway": gateway}) or 0.0


async def test_parked_receipts_are_capped_per_gateway_and_the_rest_dropped_with_a_count(pool, caplog) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    gw, other = Gateway(tenant), Gateway(tenant)
    handler = StatusHandler(pool, parked_max=3)
    t0 = utcnow() - timedelta(minutes=5)
    # receipts for messages Herald never sent: each would be parked, and kept for the whole window
    flood = [gw.receipt(f"never-{i}", ReceiptStatus.DELIVERED, t0, f"f{i}") for i in range(5)]
    with caplog.at_level("WARNING", logger="services.reports.handlers"):
        await handler(flood[:2])
        await handler(flood[2:])  # the batch goes on: one parked, two dropped
    parked = "SELECT count(*) FROM pending_receipts WHERE gateway = $1"
    assert await pool.fetchval(parked, gw.name) == 3
    assert dropped(gw.name) == 2
    warning = next(r for r in caplog.records if "unmatched receipts dropped" in r.getMessage())
    assert (warning.gateway, warning.count, warning.parked_max) == (gw.name, 2, 3)
    # a redelivered batch of receipts parked already is neither parked twice nor counted as dropped
    await handler(flood[:3])
    assert (await pool.fetchval(parked, gw.name), dropped(gw.name)) == (3, 2)
    # the cap is per gateway: another one still parks
    await handler([other.receipt("x", ReceiptStatus.DELIVERED, t0, "fx")])
    assert (await pool.fetchval(parked, other.name), dropped(other.name)) == (1, 0)
    # a parked receipt that finds its submission leaves room for a new one
    a, acc_a = gw.accepted(t0)
    await handler([acc_a, gw.submitted(a, "never-0", t0 - timedelta(seconds=1))])
    assert await states(pool, a) == ["delivered"]
    assert await pool.fetchval(parked, gw.name) == 2
    await handler([gw.receipt("later", ReceiptStatus.DELIVERED, t0, "fl")])
    assert (await pool.fetchval(parked, gw.name), dropped(gw.name)) == (3, 2)
