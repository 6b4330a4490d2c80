"""Receipts consumed before the status events that carry their gateway ids (reports far behind on
its status topic): reports finds their submission in the dispatcher's claims (the
`shared_submissions` view) and applies them, with only a handful of receipts allowed to park. The
late accepted and submitted events then end in the same state and timeline as in order. Receipts
that neither reports nor the dispatcher know are still parked up to the cap and then dropped, and
a reused gateway id goes to the most recent submission of it within the window (real PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from services.reports.handlers import PendingSweeper, StatusHandler
from shared.contracts import MessageStatusChanged, MessageStatusEvent, utcnow
from shared.kafka import Incoming
from shared.statuses import ReceiptStatus, Status
from shared.topics import STATUS
from tests.conftest import make_tenant
from tests.reports.integration.test_receipt_matching import Gateway, dropped, incoming, states

pytestmark = pytest.mark.integration

PARKED = "SELECT count(*) FROM pending_receipts WHERE gateway = $1"


async def claim(pool, gw: Gateway, message_id: uuid.UUID, gateway_id: str, at: datetime, parts: list[str] | None = None) -> None:
    """The dispatcher's claim of a message the gateway accepted (as services/dispatcher writes it)."""
    await pool.execute(
        "INSERT INTO dispatch_claims (message_id, tenant_id, state, owner, lease_until, gateway, gateway_message_id,"
        " attempts, gateway_part_ids, outbound, updated_at) VALUES ($1, $2, 'submitted', 'd1', $5, $3, $4, 1, $6, $7::jsonb, $5)",
        message_id, gw.tenant, gw.name, gateway_id, at, parts or [gateway_id], json.dumps({"body": "x"}),
    )


def submitted(gw: Gateway, message_id: uuid.UUID, ids: list[str], at: datetime) -> Incoming:
    payload = MessageStatusChanged(message_id=message_id, status=Status.SUBMITTED, gateway=gw.name,
                                   gateway_message_id=ids[0], gateway_part_ids=ids, attempts=1)
    return incoming(STATUS, MessageStatusEvent(tenant=gw.tenant, payload=payload, occurred_at=at))


def refs_from_dispatcher() -> float:
    return REGISTRY.get_sample_value("herald_receipt_refs_from_dispatcher_total") or 0.0


async def picture(pool, message_id: uuid.UUID) -> tuple:
    row = await pool.fetchrow(
        "SELECT status, status_rank, accepted_at, submitted_at, final_at, gateway, gateway_message_id, part_ids,"
        " part_status, reason_code, to_e164, type FROM messages WHERE message_id = $1", message_id)
    events = await pool.fetch(
        "SELECT status, occurred_at FROM message_events WHERE message_id = $1 ORDER BY occurred_at, status", message_id)
    finals = [e["status"] for e in events if e["status"] in ("delivered", "undelivered", "expired", "failed", "rejected")]
    return dict(row), [(e["status"], e["occurred_at"]) for e in events], finals


async def test_receipts_before_their_submissions_are_applied_from_the_dispatchers_claims(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    late, in_order = Gateway(tenant), Gateway(tenant)
    t0 = utcnow() - timedelta(minutes=10)
    n = 12
    out_of_order: dict[uuid.UUID, tuple[Incoming, Incoming, Incoming]] = {}
    reference: dict[uuid.UUID, uuid.UUID] = {}
    for i in range(n):
        at = t0 + timedelta(seconds=i)
        status = ReceiptStatus.DELIVERED if i % 3 else ReceiptStatus.UNDELIVERED
        ids = [f"L{i}"] if i % 4 else [f"L{i}a", f"L{i}b"]  # some concatenated, a receipt per part
        a, acc = late.accepted(at)
        await claim(pool, late, a, ids[0], at, ids)
        receipts = [late.receipt(p, status, at + timedelta(seconds=5), f"f{i}{p}") for p in ids]
        out_of_order[a] = (acc, submitted(late, a, ids, at), receipts)
        # the same message in order, on another gateway: the reference state
        b, acc_b = in_order.accepted(at)
        b_ids = [x.replace("L", "R") for x in ids]
        await StatusHandler(pool)([acc_b, submitted(in_order, b, b_ids, at)])
        await StatusHandler(pool)([in_order.receipt(p, status, at + timedelta(seconds=5), f"g{i}{p}") for p in b_ids])
        reference[a] = b
    handler = StatusHandler(pool, parked_max=5)
    before = refs_from_dispatcher()
    # reports reads every receipt first: the accepted and submitted events are far behind
    await handler([r for _, _, receipts in out_of_order.values() for r in receipts])
    assert await pool.fetchval(PARKED, late.name) == 0
    assert dropped(late.name) == 0
    assert refs_from_dispatcher() - before == 9 + 3 * 2  # each id: 9 single messages, 3 of two parts
    await handler([acc for acc, _, _ in out_of_order.values()])
    await handler([sub for _, sub, _ in out_of_order.values()])
    for a, b in reference.items():
        got, want = await picture(pool, a), await picture(pool, b)
        # the same row but for the gateway's name and ids (L... here, R... there)
        for row in (got[0], want[0]):
            if isinstance(row["part_status"], str):
                row["part_status"] = json.loads(row["part_status"])
        for key in ("gateway_message_id", "part_ids", "part_status"):
            got[0][key] = json.loads(json.dumps(got[0][key]).replace('"L', '"R'))
        assert got[0] | {"gateway": None} == want[0] | {"gateway": None}
        assert got[0]["gateway"] == late.name and len(got[2]) == 1
        assert got[1] == want[1]


async def test_receipts_nobody_knows_are_parked_up_to_the_cap_then_dropped(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    gw = Gateway(tenant)
    t0 = utcnow() - timedelta(minutes=5)
    a, acc = gw.accepted(t0)
    await claim(pool, gw, a, "known", t0)
    handler = StatusHandler(pool, parked_max=3)
    flood = [gw.receipt(f"never-{i}", ReceiptStatus.DELIVERED, t0, f"f{i}") for i in range(5)]
    await handler([*flood, gw.receipt("known", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=1), "fk")])
    assert await pool.fetchval(PARKED, gw.name) == 3
    assert dropped(gw.name) == 2
    assert await states(pool, a) == ["delivered"]
    # the sweeper looks the parked ones up in the dispatcher's claims too
    b, _ = gw.accepted(t0)
    await claim(pool, gw, b, "never-0", t0)
    assert await PendingSweeper(pool, 1.0).sweep_once() >= 1  # (and any other test's now matched)
    assert await states(pool, b) == ["delivered"]
    assert await pool.fetchval(PARKED, gw.name) == 2


async def test_a_reused_id_in_the_claims_goes_to_the_most_recent_submission_within_the_window(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    gw = Gateway(tenant)
    handler = StatusHandler(pool, window=timedelta(hours=24))
    t0 = utcnow() - timedelta(days=3)
    t1 = utcnow() - timedelta(hours=3)
    old, new, newest = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await claim(pool, gw, old, "1", t0)
    await claim(pool, gw, new, "1", t1)
    await claim(pool, gw, newest, "1", t1 + timedelta(hours=1))
    # for the submission an hour before the newest: that one, not the newest
    await handler([gw.receipt("1", ReceiptStatus.DELIVERED, t1 + timedelta(seconds=2), "fa")])
    assert await states(pool, new) == ["delivered"]
    await handler([gw.receipt("1", ReceiptStatus.UNDELIVERED, t1 + timedelta(hours=1, seconds=2), "fb")])
    assert await states(pool, new, newest) == ["delivered", "undelivered"]
    # a late receipt for the oldest submission still reaches it
    await handler([gw.receipt("1", ReceiptStatus.EXPIRED, t0 + timedelta(seconds=2), "fc")])
    assert await states(pool, old, new, newest) == ["expired", "delivered", "undelivered"]
    # a submission made longer than the window before the receipt takes none: it is parked (and
    # longer than the default window too, so no other test's sweeper takes it)
    stale = uuid.uuid4()
    await claim(pool, gw, stale, "2", t1 - timedelta(days=9))
    await handler([gw.receipt("2", ReceiptStatus.DELIVERED, t1, "fd")])
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE message_id = $1 AND status_rank > 0", stale) == 0
    assert await pool.fetchval(PARKED, gw.name) == 1
