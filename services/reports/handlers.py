"""reports' batch handler and the sweeper that applies receipts which came too early."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.reports import metrics
from services.reports.domain import Change, Transition, fold, from_accepted, from_receipt, from_status
from services.reports.repository import (
    DEFAULT_PARKED_MAX,
    DEFAULT_SETTLED_WAIT,
    DEFAULT_SKEW,
    DEFAULT_WINDOW,
    ReceiptKey,
    ReportsRepository,
)
from services.reports.webhooks import repository as webhook_outbox
from services.reports.webhooks import rules as webhook_rules
from shared.contracts import DeliveryReceipt, MessageAccepted, MessageStatusChanged
from shared.kafka import Incoming, Outgoing
from shared.periodic import run_periodically
from shared.statuses import SETTLED, Status

log = logging.getLogger(__name__)


def _parked_changes(rows: list[dict[str, Any]]) -> list[Change]:
    changes = []
    for row in rows:
        receipt = DeliveryReceipt.model_validate(row["receipt"])
        at = row["occurred_at"] or row["received_at"]
        changes.append(from_receipt(row["event_id"], row["message_id"], row["tenant_id"], at, receipt))
    if changes:
        metrics.RECEIPTS_UNPARKED.inc(len(changes))
    return changes


async def record(repo: ReportsRepository, changes: list[Change]) -> list[Transition]:
    """Lock the messages, fold the changes in, write states and timeline. Inside a transaction."""
    if not changes:
        return []
    by_message: dict[uuid.UUID, list[Change]] = defaultdict(list)
    owners: dict[uuid.UUID, str] = {}
    for change in changes:
        by_message[change.message_id].append(change)
        owners.setdefault(change.message_id, change.tenant_id)
    states = await repo.lock_states(owners)
    new_states = []
    transitions: list[Transition] = []
    timeline: list[Change] = []
    for message_id, message_changes in by_message.items():
        state, moved, shown = fold(states[message_id], message_changes)
        if state != states[message_id]:
            new_states.append(state)
        transitions += moved
        timeline += shown
    await repo.save_states(new_states)
    await repo.add_timeline(timeline)
    # status webhooks: outbox rows commit with the states (services/reports/webhooks/)
    await webhook_outbox.enqueue(repo.conn, webhook_rules.notifications(states, new_states, by_message, transitions))
    return transitions


def observe(transitions: list[Transition]) -> None:
    """Update metrics after the transaction committed."""
    for t in transitions:
        s = t.state
        mtype = s.fields.get("type") or "unknown"
        gateway = s.gateway or "none"
        if t.new is Status.SUBMITTED:
            metrics.MESSAGES_SUBMITTED.labels(mtype, gateway).inc()
            if s.accepted_at and s.submitted_at:
                metrics.ACCEPT_TO_SUBMIT.labels(mtype).observe(max(0.0, (s.submitted_at - s.accepted_at).total_seconds()))
        if t.old is Status.UNKNOWN:
            metrics.UNKNOWN_RESOLVED.labels(t.new.value, gateway).inc()
        if t.new in SETTLED:
            metrics.MESSAGES_FINAL.labels(t.new.value, mtype, gateway).inc()
            if s.submitted_at and s.final_at:
                metrics.SUBMIT_TO_FINAL.labels(t.new.value).observe(max(0.0, (s.final_at - s.submitted_at).total_seconds()))


def _message_ref(receipt: DeliveryReceipt) -> uuid.UUID | None:
    """Herald's message id when the gateway echoed it in the receipt."""
    if not receipt.client_ref:
        return None
    try:
        return uuid.UUID(receipt.client_ref)
    except ValueError:
        return None


class StatusHandler:
    def __init__(
        self, pool: asyncpg.Pool, window: timedelta = DEFAULT_WINDOW, skew: timedelta = DEFAULT_SKEW,
        settled_wait: timedelta = DEFAULT_SETTLED_WAIT, parked_max: int = DEFAULT_PARKED_MAX,
    ) -> None:
        self.pool = pool
        self.window = window
        self.skew = skew
        self.settled_wait = settled_wait
        self.parked_max = parked_max

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        changes: list[Change] = []
        refs: list[tuple[str, str, uuid.UUID, datetime]] = []
        receipts: list[tuple[uuid.UUID, datetime, DeliveryReceipt]] = []
        for item in batch:
            event, payload = item.event, item.event.payload
            if isinstance(payload, MessageAccepted):
                changes.append(from_accepted(event.event_id, event.tenant, payload))
            elif isinstance(payload, MessageStatusChanged):
                changes.append(from_status(event.event_id, event.tenant, event.occurred_at, payload))
                if payload.gateway and payload.gateway_message_id:
                    for part_id in {payload.gateway_message_id, *payload.gateway_part_ids}:
                        refs.append((payload.gateway, part_id, payload.message_id, event.occurred_at))
            elif isinstance(payload, DeliveryReceipt):
                receipts.append((event.event_id, event.occurred_at, payload))
        async with self.pool.acquire() as conn, conn.transaction():
            repo = ReportsRepository(conn, self.window, self.skew, self.settled_wait, self.parked_max)
            await repo.add_refs(refs)
            # make sure messages exist before resolving receipts against them
            transitions = await record(repo, changes)
            # each receipt to the submission of its gateway id it belongs to (ids are reused)
            known = await repo.match_locked(
                [ReceiptKey(event_id, r.gateway, r.gateway_message_id, at) for event_id, at, r in receipts]
            )
            # A message whose outcome is unknown has no gateway id: a receipt that echoes
            # Herald's id (client_ref) for it, from the gateway it was sent to, settles it.
            by_reference = await repo.resolve_unknown([
                (r.gateway, ref) for event_id, _, r in receipts
                if event_id not in known and (ref := _message_ref(r)) is not None
            ])
            receipt_changes: list[Change] = []
            parked = []
            late_refs: list[tuple[str, str, uuid.UUID, datetime]] = []
            for event_id, occurred_at, receipt in receipts:
                found = known.get(event_id)
                ref = _message_ref(receipt)
                if found is None and ref is not None and ref in by_reference:
                    found = (ref, by_reference[ref])
                    late_refs.append((receipt.gateway, receipt.gateway_message_id, ref, occurred_at))
                if found is None:
                    parked.append((event_id, receipt.gateway, receipt.gateway_message_id, occurred_at, receipt.model_dump_json()))
                else:
                    receipt_changes.append(from_receipt(event_id, found[0], found[1], occurred_at, receipt))
            dropped = await repo.park_receipts(parked)
            receipt_changes += _parked_changes(await repo.take_matched_receipts(sorted({(g, i) for g, i, _, _ in refs})))
            unknown_now = [t.message_id for t in transitions if t.new is Status.UNKNOWN]
            for row in await repo.take_parked_for_unknown(unknown_now):
                at = row["occurred_at"] or row["received_at"]
                late_refs.append((row["gateway"], row["gateway_message_id"], row["message_id"], at))
                receipt_changes += _parked_changes([row])
            await repo.add_refs(late_refs)
            transitions += await record(repo, receipt_changes)
        metrics.RECEIPTS_PARKED.inc(len(parked) - sum(dropped.values()))
        for gateway, count in dropped.items():
            # a gateway sending receipts for messages Herald never sent (or a flood of them): the
            # receipts are dropped, never the batch
            metrics.RECEIPTS_PARK_DROPPED.labels(gateway).inc(count)
            log.warning("unmatched receipts dropped: the gateway has the most parked receipts allowed",
                        extra={"gateway": gateway, "count": count, "parked_max": self.parked_max})
        observe(transitions)
        return []


class PendingSweeper:
    """Applies parked receipts whose submission another instance recorded meanwhile."""

    def __init__(
        self, pool: asyncpg.Pool, interval_s: float, window: timedelta = DEFAULT_WINDOW, skew: timedelta = DEFAULT_SKEW,
        settled_wait: timedelta = DEFAULT_SETTLED_WAIT,
    ) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.window = window
        self.skew = skew
        self.settled_wait = settled_wait
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def sweep_once(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            repo = ReportsRepository(conn, self.window, self.skew, self.settled_wait)
            changes = _parked_changes(await repo.take_matched_receipts(None))
            transitions = await record(repo, changes)
            expired = await repo.expire_parked()
        observe(transitions)
        if expired:
            metrics.RECEIPTS_EXPIRED.inc(expired)
            log.warning("parked receipts dropped unmatched after the matching window", extra={"count": expired})
        return len(changes)

    async def run(self) -> None:
        await run_periodically("receipt_sweep", self.sweep_once, self.interval_s, self._stop, logger=log,
                               error_message="pending receipt sweep failed")
