"""The scheduler's batch handler and its timer: load facts once per batch, decide, emit.

A held message (send_at, quiet hours) goes into ``scheduled_messages``; the timer takes due
rows with FOR UPDATE SKIP LOCKED, decides again (the number may have opted out meanwhile,
or the time may fall into quiet hours), publishes, and only then commits the removal: a
crash in between releases the row again and the dispatcher's claim drops the duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.scheduler import metrics
from services.scheduler import repository as held_messages
from services.scheduler.domain import (
    DEFAULT_POLICY,
    CampaignState,
    Contact,
    Decision,
    Facts,
    Releases,
    TenantPolicy,
    Verdict,
    command_decision,
    decide,
    marking_tenants,
    parse_caps,
)
from shared.contracts import (
    MessageAccepted,
    MessageOutbound,
    MessageOutboundEvent,
    MessageStatusChanged,
    MessageStatusEvent,
    derived_event_id,
    utcnow,
)
from shared.erasure import NO_KEYS, ErasureKeys
from shared.kafka import YIELD_EVERY, Incoming, Outgoing, Publisher
from shared.periodic import run_periodically
from shared.statuses import MessageType, Status
from shared.topics import STATUS, outbound_topic

log = logging.getLogger(__name__)


RELEASES_KEPT = timedelta(days=35)  # longer than the longest cap window the API accepts (31 days)


class FactsRepository:
    """Loads what the policies need for one batch: a few queries per batch, never one per message."""

    def __init__(self, pool: asyncpg.Pool, policy_ttl_s: float = 5.0, tenant_ttl_s: float = 1.0,
                 erasure_keys: ErasureKeys = NO_KEYS) -> None:
        self.pool = pool
        self.erasure_keys = erasure_keys  # erased numbers' hashes are checked under every version
        self.policy_ttl_s = policy_ttl_s
        self.tenant_ttl_s = tenant_ttl_s
        self._policies: dict[str, tuple[float, TenantPolicy]] = {}
        self._disabled: dict[str, tuple[float, bool]] = {}

    async def load(self, items: list[tuple[str, MessageAccepted]], conn: asyncpg.Connection | None = None,
                   now: datetime | None = None) -> Facts:
        db = conn or self.pool
        disabled = await self._disabled_tenants(db, {t for t, _ in items})
        items = [(t, m) for t, m in items if t not in disabled]  # suppressed whatever else holds
        keys = _fact_keys(items)
        campaign_ids = list({m.campaign_id for _, m in items if m.campaign_id is not None})
        if not keys and not campaign_ids:
            return Facts(disabled_tenants=disabled)
        campaigns = await self._campaigns(db, campaign_ids)
        if not keys:
            return Facts(campaigns=campaigns, disabled_tenants=disabled)
        tenants, phones = (list(x) for x in zip(*keys, strict=True))
        # Global opt-outs (via NULL), and scoped ones (docs/replies.md) keyed by every sender of that scope.
        rows = await db.fetch(
            "SELECT s.tenant_id, s.phone_e164, NULL::text AS via, s.reason FROM shared_suppressions s"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON s.tenant_id = k.t AND s.phone_e164 = k.p"
            " UNION ALL SELECT s.tenant_id, s.phone_e164, n.number, s.reason FROM shared_scoped_suppressions s"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON s.tenant_id = k.t AND s.phone_e164 = k.p"
            " JOIN shared_tenant_numbers n ON n.tenant_id = s.tenant_id AND n.scope = s.scope"
            # Erased numbers stay suppressed by a keyed hash of tenant and number (shared/erasure.py),
            # computed here (the key never reaches the database) under every key version.
            " UNION ALL SELECT DISTINCT ON (k.t, k.p) k.t, k.p, NULL, h.reason"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, p, hashes)"
            " JOIN shared_suppression_hashes h ON h.tenant_id = k.t AND h.phone_hash = ANY(string_to_array(k.hashes, ','))",
            tenants,
            phones,
            [",".join(self.erasure_keys.candidates(t, p)) for t, p in zip(tenants, phones, strict=True)],
        )
        contact_rows = await db.fetch(
            "SELECT c.tenant_id, c.phone_e164, c.contact_id, c.consent_marketing, c.time_zone,"
            " c.attributes ->> 'state' AS subdivision FROM shared_contacts c"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON c.tenant_id = k.t AND c.phone_e164 = k.p",
            tenants,
            phones,
        )
        policies = await self._tenant_policies(db, set(tenants))
        capped = any(policies[t].caps for t in tenants) or any(c.caps for c in campaigns.values())
        releases = Releases()
        if capped:
            release_rows = await db.fetch(
                "SELECT r.tenant_id, r.phone_e164, r.message_id, r.released_at FROM marketing_releases r"
                " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON r.tenant_id = k.t AND r.phone_e164 = k.p"
                " WHERE r.released_at > $3",
                tenants,
                phones,
                (now or utcnow()) - RELEASES_KEPT,
            )
            grouped: dict[tuple[str, str], list[tuple[uuid.UUID, datetime]]] = {}
            for r in release_rows:
                grouped.setdefault((r["tenant_id"], r["phone_e164"]), []).append((r["message_id"], r["released_at"]))
            releases = Releases(grouped)
        return Facts(
            suppressions={(r["tenant_id"], r["phone_e164"]): r["reason"] for r in rows if r["via"] is None},
            scoped_suppressions={(r["tenant_id"], r["phone_e164"], r["via"]): r["reason"] for r in rows if r["via"]},
            contacts={
                (r["tenant_id"], r["phone_e164"]): Contact(r["contact_id"], r["consent_marketing"], r["time_zone"], r["subdivision"])
                for r in contact_rows
            },
            policies=policies,
            campaigns=campaigns,
            releases=releases,
            disabled_tenants=disabled,
        )

    async def _disabled_tenants(self, db: asyncpg.Connection | asyncpg.Pool, tenants: set[str]) -> frozenset[str]:
        """Which of ``tenants`` an operator disabled, cached for ``tenant_ttl_s`` (a disable acts within about a second)."""
        clock = time.monotonic()
        stale = [t for t in tenants if t not in self._disabled or self._disabled[t][0] < clock]
        if stale:
            rows = await db.fetch(
                "SELECT tenant_id FROM shared_tenant_settings WHERE tenant_id = ANY($1::text[]) AND disabled_at IS NOT NULL", stale
            )
            found = {r["tenant_id"] for r in rows}
            if len(self._disabled) > 10_000:
                self._disabled.clear()
            for t in stale:
                self._disabled[t] = (clock + self.tenant_ttl_s, t in found)
        return frozenset(t for t in tenants if self._disabled[t][1])

    async def wake_disabled_tenants(self) -> int:
        """Re-decide at once the held messages of disabled tenants (they end suppressed)."""
        result = await self.pool.execute(
            "UPDATE scheduled_messages s SET due_at = now() FROM shared_tenant_settings t"
            " WHERE t.disabled_at IS NOT NULL AND s.tenant_id = t.tenant_id AND s.due_at > now()"
        )
        return int(result.split()[-1])

    async def _campaigns(self, db: asyncpg.Connection | asyncpg.Pool, ids: list[uuid.UUID]) -> dict[uuid.UUID, CampaignState]:
        # Not cached: a pause must take effect within a batch or two.
        if not ids:
            return {}
        rows = await db.fetch(
            "SELECT campaign_id, state, frequency_caps, cancel_reason FROM shared_campaign_states WHERE campaign_id = ANY($1::uuid[])", ids
        )
        return {r["campaign_id"]: CampaignState(r["state"], parse_caps(r["frequency_caps"]), r["cancel_reason"]) for r in rows}

    async def _tenant_policies(self, db: asyncpg.Connection | asyncpg.Pool, tenants: set[str]) -> dict[str, TenantPolicy]:
        clock = time.monotonic()
        missing = [t for t in tenants if t not in self._policies or self._policies[t][0] < clock]
        if missing:
            rows = await db.fetch(
                "SELECT tenant_id, marketing_consent, frequency_caps FROM shared_tenant_settings WHERE tenant_id = ANY($1::text[])", missing
            )
            for t in missing:
                self._policies[t] = (clock + self.policy_ttl_s, DEFAULT_POLICY)
            for r in rows:
                policy = TenantPolicy(r["marketing_consent"], parse_caps(r["frequency_caps"]))
                self._policies[r["tenant_id"]] = (clock + self.policy_ttl_s, policy)
        return {t: self._policies[t][1] for t in tenants}

    async def record_releases(self, conn: asyncpg.Connection | asyncpg.Pool, releases: Releases) -> None:
        """Store the marketing messages released in this batch, for later caps."""
        if not releases.added:
            return
        await conn.execute(
            "INSERT INTO marketing_releases (tenant_id, phone_e164, message_id, released_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[]) ON CONFLICT DO NOTHING",
            *(list(column) for column in zip(*releases.added, strict=True)),
        )

    async def forget_releases(self, now: datetime) -> int:
        """Delete releases older than any cap window."""
        result = await self.pool.execute("DELETE FROM marketing_releases WHERE released_at < $1", now - RELEASES_KEPT)
        return int(result.split()[-1])

    async def wake_campaigns(self, since: datetime) -> tuple[datetime, int]:
        """Re-decide at once the held messages of campaigns that left the paused state.

        Returns the newest ``updated_at`` seen (the next ``since``) and how many rows woke.
        """
        rows = await self.pool.fetch(
            "SELECT campaign_id, state, updated_at FROM shared_campaign_states WHERE updated_at > $1 ORDER BY updated_at", since
        )
        if not rows:
            return since, 0
        active = [r["campaign_id"] for r in rows if r["state"] != "paused"]
        woke = 0
        if active:
            result = await self.pool.execute(
                "UPDATE scheduled_messages SET due_at = now() WHERE campaign_id = ANY($1::uuid[])"
                " AND reason_code = 'campaign_paused'",
                active,
            )
            woke = int(result.split()[-1])
        return rows[-1]["updated_at"], woke

    async def hold(self, conn: asyncpg.Connection | asyncpg.Pool, rows: list[tuple[MessageAccepted, str, str, Decision]]) -> None:
        """Store held messages: (message, tenant, trace id, DEFER decision). A row already held stays."""
        if not rows:
            return
        await conn.execute(
            "INSERT INTO scheduled_messages (message_id, tenant_id, due_at, accepted, trace_id, reason_code, campaign_id)"
            " SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::text[], $6::text[], $7::uuid[])"
            " ON CONFLICT (message_id) DO UPDATE SET due_at = excluded.due_at, reason_code = excluded.reason_code",
            [m.message_id for m, *_ in rows],
            [t for _, t, _, _ in rows],
            [d.due_at for *_, d in rows],
            [json.loads(m.model_dump_json()) for m, *_ in rows],
            [tr for _, _, tr, _ in rows],
            [d.reason_code for *_, d in rows],
            [m.campaign_id for m, *_ in rows],
        )


def _status(tenant: str, trace: str, message: MessageAccepted, status: Status, decision: Decision, now: datetime,
            page_at: datetime | None = None) -> Outgoing:
    payload = MessageStatusChanged(
        message_id=message.message_id,
        status=status,
        reason_code=decision.reason_code,
        reason=decision.reason,
        type=message.type,
        segments=message.segments,
        detail={**decision.detail, **({"due_at": decision.due_at.isoformat()} if decision.due_at else {})},
        campaign_page_at=page_at,
    )
    # Each hold is its own fact (a message may be held twice: send_at, then quiet hours).
    key = decision.due_at.isoformat() if decision.due_at else ""
    event = MessageStatusEvent(
        event_id=derived_event_id(message.message_id, status, key),
        tenant=tenant,
        trace_id=trace,
        occurred_at=now,
        payload=payload,
    )
    return Outgoing(STATUS, str(message.message_id), event)


def route(tenant: str, trace: str, message: MessageAccepted, decision: Decision, now: datetime,
          held: list[tuple[MessageAccepted, str, str, Decision]], *, mark_lanes: bool = False) -> list[Outgoing]:
    """Events for one decision; DEFER also appends to ``held`` for the caller to store.
    ``mark_lanes``: a campaign message suppressed or held here leaves the campaign lanes, and its
    status says so (``campaign_page_at``, see :func:`marking_tenants`)."""
    metrics.DECISIONS.labels(decision.verdict.value, decision.reason_code or "", message.type.value).inc()
    if decision.verdict is Verdict.RELEASE:
        outbound = MessageOutbound(**message.model_dump(), released_at=now)
        event = MessageOutboundEvent(
            event_id=derived_event_id(message.message_id, "outbound"), tenant=tenant, trace_id=trace, payload=outbound
        )
        lane = outbound_topic(message)
        return [Outgoing(lane, message.to, event)]
    page_at = message.accepted_at if mark_lanes and message.campaign_id is not None else None
    if decision.verdict is Verdict.DEFER:
        held.append((message, tenant, trace, decision))
        return [_status(tenant, trace, message, Status.SCHEDULED, decision, now, page_at)]
    return [_status(tenant, trace, message, Status.SUPPRESSED, decision, now, page_at)]


def _fact_keys(items: list[tuple[str, MessageAccepted]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((tenant, m.to) for tenant, m in items if m.type is MessageType.MARKETING))


class AcceptedHandler:
    def __init__(self, facts: FactsRepository, clock: Callable[[], datetime] = utcnow) -> None:
        self.facts = facts
        self.clock = clock

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        now = self.clock()
        facts = await self.facts.load([(i.event.tenant, i.event.payload) for i in batch], now=now)
        outgoing: list[Outgoing] = []
        held: list[tuple[MessageAccepted, str, str, Decision]] = []
        decisions: list[Decision] = []
        for index, item in enumerate(batch):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the priority lane shares this event loop
            message = item.event.payload
            assert isinstance(message, MessageAccepted)
            decisions.append(decide(item.event.tenant, message, facts, now))
        # Campaign messages suppressed or held here leave the lanes: their statuses move the
        # tenant's mark for the launcher's pacing (ingest keeps it), unless some went on.
        marking = marking_tenants((i.event.tenant, d.verdict is Verdict.RELEASE)
                                  for i, d in zip(batch, decisions, strict=True) if i.event.payload.campaign_id is not None)
        for index, (item, decision) in enumerate(zip(batch, decisions, strict=True)):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            outgoing += route(item.event.tenant, item.event.trace_id, item.event.payload, decision, now, held,
                              mark_lanes=item.event.tenant in marking)
        # Held rows and releases are written before the events are published and the offsets committed.
        await self.facts.hold(self.facts.pool, held)
        await self.facts.record_releases(self.facts.pool, facts.releases)
        metrics.HELD.inc(len(held))
        return outgoing


class Timer:
    """Releases held messages when due; any number of scheduler instances can run it."""

    def __init__(
        self,
        facts: FactsRepository,
        publisher: Publisher,
        interval_s: float,
        batch: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.facts = facts
        self.publisher = publisher
        self.interval_s = interval_s
        self.batch = batch
        self.clock = clock
        self._stop = asyncio.Event()
        self._campaigns_since = datetime(2000, 1, 1, tzinfo=UTC)  # first pass: every campaign
        self._next_cleanup = 0.0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await run_periodically("release_due", self._pass, self.interval_s, self._stop, logger=log,
                               error_message="releasing due messages failed; retrying")

    async def _pass(self) -> None:
        await self.housekeeping()
        while await self.release_due() >= self.batch and not self._stop.is_set():
            pass

    async def housekeeping(self) -> None:
        """Wake the held messages of resumed or cancelled campaigns and of disabled tenants; forget old cap releases."""
        self._campaigns_since, woke = await self.facts.wake_campaigns(self._campaigns_since)
        if woke:
            log.info("campaign resumed or cancelled: %d held messages decided again", woke)
        woke = await self.facts.wake_disabled_tenants()
        if woke:
            log.info("tenant disabled: %d held messages decided again", woke)
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + 600
            await self.facts.forget_releases(self.clock())

    async def release_due(self) -> int:
        now = self.clock()
        async with self.facts.pool.acquire() as conn, conn.transaction():
            rows = await held_messages.take_due(conn, now, self.batch)
            if not rows:
                return 0
            items = [(r["tenant_id"], MessageAccepted.model_validate(r["accepted"])) for r in rows]
            facts = await self.facts.load(items, conn, now=now)
            outgoing: list[Outgoing] = []
            held: list[tuple[MessageAccepted, str, str, Decision]] = []
            for row, (tenant, message) in zip(rows, items, strict=True):
                decision = decide(tenant, message, facts, now)
                outgoing += route(tenant, row["trace_id"], message, decision, now, held)
            released = [r["message_id"] for r in rows if r["message_id"] not in {m.message_id for m, *_ in held}]
            await held_messages.release(conn, released)
            await self.facts.hold(conn, held)  # held again (e.g. due in quiet hours): new due time
            await self.facts.record_releases(conn, facts.releases)
            await self.publisher.publish(outgoing)  # before commit: a crash re-releases, never loses
        lateness = max((now - r["due_at"]).total_seconds() for r in rows)
        metrics.RELEASE_LATENESS.observe(lateness)
        metrics.RELEASED.inc(len(released))
        return len(rows)


class CommandHandler:
    """Applies clients' commands (``messages.commands.v1``) to held messages: the scheduler owns
    ``scheduled_messages``. A cancel deletes the row and publishes ``suppressed``
    (``cancelled_by_client``); a reschedule moves ``due_at`` (and the stored ``send_at``) and
    publishes ``scheduled`` with the new time. A message no longer held (released already, or not
    decided yet) is left alone. The events are published before the change commits, so a crash
    applies the command again (idempotent) rather than losing its event."""

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, clock: Callable[[], datetime] = utcnow) -> None:
        self.pool = pool
        self.publisher = publisher
        self.clock = clock

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        now = self.clock()
        last: dict[uuid.UUID, tuple[str, str, Any]] = {}  # the last command per message wins
        for item in batch:
            last[item.event.payload.message_id] = (item.event.tenant, item.event.trace_id, item.event.payload)
        cancels = [(mid, t) for mid, (t, _, c) in last.items() if c.action == "cancel"]
        moves = [(mid, t, c.send_at) for mid, (t, _, c) in last.items() if c.action == "reschedule" and c.send_at]
        outgoing: list[Outgoing] = []
        async with self.pool.acquire() as conn, conn.transaction():
            cancelled = await held_messages.cancel(conn, cancels)
            moved = await held_messages.reschedule(conn, moves)
            for rows, status in ((cancelled, Status.SUPPRESSED), (moved, Status.SCHEDULED)):
                for row in rows:
                    tenant, trace, command = last[row["message_id"]]
                    message = MessageAccepted.model_validate(row["accepted"])
                    decision = command_decision(command.action, command.send_at)
                    outgoing.append(_status(tenant, trace, message, status, decision, now))
            await self.publisher.publish(outgoing)
        applied = {row["message_id"] for row in [*cancelled, *moved]}
        for mid, (tenant, _, command) in last.items():
            outcome = "applied" if mid in applied else "not_held"
            metrics.COMMANDS.labels(command.action, outcome).inc()
            log.info("message command %s", outcome,
                     extra={"message_id": str(mid), "tenant": tenant, "action": command.action})
        return []
