"""Receipts consumed before the status events that carry their gateway ids (reports far behind on
its status topic, as in a million-message campaign): past the per-gateway parking cap they are
kept when the dispatcher submitted their ids (the `shared_submissions` view), and applied once
the status events arrive, ending in the same state and timeline as in order. Receipts for ids the
dispatcher never submitted (or submitted longer than the window before) are still parked up to
the cap and then dropped. The view is evidence only: matching stays on reports' own records
(real PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest

from services.reports.handlers import StatusHandler
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


async def picture(pool, message_id: uuid.UUID) -> tuple:
    row = await pool.fetchrow(
        "SELECT status, status_rank, accepted_at, submitted_at, final_at, gateway, gateway_message_id, part_ids,"
        " part_status, reason_code, to_e164, type FROM messages WHERE message_id = $1", message_id)
    events = await pool.fetch(
        "SELECT status, occurred_at FROM message_events WHERE message_id = $1 ORDER BY occurred_at, status", message_id)
    finals = [e["status"] for e in events if e["status"] in ("delivered", "undelivered", "expired", "failed", "rejected")]
    return dict(row), [(e["status"], e["occurred_at"]) for e in events], finals


async def test_receipts_past_the_cap_for_submitted_ids_are_kept_and_applied_when_the_status_events_come(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    late, in_order = Gateway(tenant), Gateway(tenant)
    t0 = utcnow() - timedelta(minutes=10)
    n = 12
    out_of_order: dict[uuid.UUID, tuple[Incoming, Incoming, list[Incoming]]] = {}
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
    # reports reads every receipt first: the accepted and submitted events are far behind
    await handler([r for _, _, receipts in out_of_order.values() for r in receipts])
    assert dropped(late.name) == 0
    assert await pool.fetchval(PARKED, late.name) == 9 + 3 * 2  # 9 single messages, 3 of two parts
    await handler([acc for acc, _, _ in out_of_order.values()])
    await handler([sub for _, sub, _ in out_of_order.values()])
    assert await pool.fetchval(PARKED, late.name) == 0
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


async def test_receipts_for_ids_nobody_submitted_are_parked_up_to_the_cap_then_dropped(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    gw = Gateway(tenant)
    t0 = utcnow() - timedelta(minutes=5)
    b, acc = gw.accepted(t0)
    await claim(pool, gw, b, "known", t0)
    # a submission longer than the window before its receipt vouches for nothing
    await claim(pool, gw, uuid.uuid4(), "stale", t0 - timedelta(days=9))
    handler = StatusHandler(pool, parked_max=3)
    flood = [gw.receipt(f"never-{i}", ReceiptStatus.DELIVERED, t0, f"f{i}") for i in range(5)]
    await handler([*flood, gw.receipt("stale", ReceiptStatus.DELIVERED, t0, "fs"),
                   gw.receipt("known", ReceiptStatus.DELIVERED, t0 + timedelta(seconds=1), "fk")])
    assert dropped(gw.name) == 3  # two strays past the cap and the stale one
    parked = {r["gateway_message_id"] for r in await pool.fetch(
        "SELECT gateway_message_id FROM pending_receipts WHERE gateway = $1", gw.name)}
    assert parked == {"never-0", "never-1", "never-2", "known"}
    # the known one is applied when its submission's events arrive, as any parked receipt
    await handler([acc])
    await handler([submitted(gw, b, ["known"], t0)])
    assert await states(pool, b) == ["delivered"]
    assert await pool.fetchval(PARKED, gw.name) == 3

