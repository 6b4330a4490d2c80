"""Status webhooks to customers: a transactional outbox and the worker that empties it.

``record()`` (handlers.py) calls :func:`notifications` and :func:`enqueue` in the transaction
that writes the new states, so a status change and its webhook row commit together.
:class:`WebhookWorker` claims due rows with ``FOR UPDATE SKIP LOCKED`` — only the head of
each message (its lowest pending ``seq``, flagged ``head``), so a message's callbacks are posted
in order and a claim reads only due heads — signs each body with the tenant's secret
(shared/signatures.py), posts it through one pooled aiohttp client, and writes the results of
the posts that ended back in one transaction: delivered, retried later with exponential backoff,
or dead-lettered, and the next row of each finished message made its head. See docs/webhooks.md.

Ordinary replies (``replies.v1`` with the tenant's reply webhook URL) go through the same
outbox and worker (:class:`ReplyWebhookHandler`, :func:`enqueue_replies`): their ordering key
is the conversation (tenant + handset number), so one handset's replies are posted in order.
See docs/replies.md.

``python -m services.reports.webhooks secret TENANT`` prints a tenant's signing secret
(creating it if needed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets as secrets_module
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver

from services.reports import metrics
from services.reports.domain import Change, MessageState, Transition
from shared.contracts import ReplyForwardedEvent, derived_event_id
from shared.egress import URL_INVALID, EgressPolicy, addresses_refusal, url_refusal
from shared.kafka import Incoming, Outgoing
from shared.signatures import HEADER as SIGNATURE_HEADER
from shared.signatures import sign
from shared.statuses import RANK, SETTLED, Status

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "X-Herald-Event-Id"
ATTEMPT_HEADER = "X-Herald-Delivery-Attempt"
USER_AGENT = "Herald-Webhooks/1"
SECRET_PREFIX = "whsec_"
SECRET_CACHE_S = 300.0
MAX_ANSWER_BYTES = 64 * 1024  # a longer answer body is not read: its connection is closed instead
DEFER_S = 1.0  # a row put back because its tenant or receiver is at its cap is due again after this


# --- pure parts -------------------------------------------------------------------------------


class Kind(StrEnum):
    """What an outbox row posts (webhook_outbox.kind)."""

    STATUS = "status"
    REPLY = "reply"


@dataclass(frozen=True)
class Notification:
    """One status change to tell a customer about (before it has a seq)."""

    message_id: uuid.UUID
    tenant_id: str
    url: str
    status: Status
    previous_status: Status | None
    occurred_at: datetime | None
    reason_code: str | None
    reason: str | None
    gateway: str | None
    segments: int | None
    metadata: dict[str, str]
    attempts: int | None


def event_id(message_id: uuid.UUID, status: Status) -> uuid.UUID:
    """The same for every re-post of one status change: receivers deduplicate on it."""
    return derived_event_id("webhook", message_id, status.value)


def _note(state: MessageState, url: str, status: Status, previous: Status | None, occurred_at: datetime | None,
          change: Change | None) -> Notification:
    final = status in SETTLED
    reason_code = change.reason_code if change else None
    reason = change.reason if change else None
    if final and reason_code is None and state.status is status:
        reason_code, reason = state.reason_code, state.reason
    attempts = change.detail.get("attempts") if change else None
    return Notification(
        message_id=state.message_id, tenant_id=state.tenant_id, url=url,
        status=status, previous_status=previous, occurred_at=occurred_at,
        reason_code=reason_code, reason=reason, gateway=state.gateway,
        segments=state.fields.get("segments"), metadata=dict(state.fields.get("metadata") or {}),
        attempts=attempts if isinstance(attempts, int) else None,
    )


def _catch_up(before: MessageState, after: MessageState) -> list[Notification]:
    """The status moved before the callback URL was known (its accepted event came late):
    tell what is known of the path so far, in order."""
    steps: list[tuple[Status, datetime | None]] = [(Status.ACCEPTED, after.accepted_at)]
    if after.submitted_at is not None:
        steps.append((Status.SUBMITTED, after.submitted_at))
    current_at = before.final_at if before.status in SETTLED else None
    steps.append((before.status, current_at or (after.submitted_at if before.status is Status.SUBMITTED else None)))
    notes: list[Notification] = []
    previous: Status | None = None
    for status, at in steps:
        if RANK[status] > before.rank or status is previous or any(n.status is status for n in notes):
            continue
        notes.append(_note(after, after.fields["status_callback_url"], status, previous, at, None))
        previous = status
    return notes


def notifications(
    before: Mapping[uuid.UUID, MessageState],
    saved: Iterable[MessageState],
    changes: Mapping[uuid.UUID, Sequence[Change]],
    transitions: Iterable[Transition],
) -> list[Notification]:
    """What to post for one ``record()`` call, in order per message.

    ``before``: the locked states; ``saved``: the states written; ``changes``: the changes by
    message; ``transitions``: what ``apply`` returned. Only messages with a callback URL count;
    the URL of the state after the batch is used, so a URL that comes with the accepted event
    in the same batch as later changes covers them too.
    """
    after = {**before, **{s.message_id: s for s in saved}}
    moved: dict[uuid.UUID, list[Transition]] = defaultdict(list)
    for t in transitions:
        moved[t.message_id].append(t)
    notes: list[Notification] = []
    for message_id, state in after.items():
        url = state.fields.get("status_callback_url")
        if not url:
            continue
        old = before.get(message_id)
        if old is not None and old.rank > 0 and not old.fields.get("status_callback_url"):
            notes += _catch_up(old, state)
        for t in moved.get(message_id, []):
            causes = [c for c in changes.get(message_id, ()) if c.status is t.new]
            cause = min(causes, key=lambda c: c.occurred_at) if causes else None
            notes.append(_note(t.state, url, t.new, t.old, cause.occurred_at if cause else None, cause))
    return notes


def build_payload(note: Notification, seq: int) -> dict[str, Any]:
    return {
        "event_id": str(event_id(note.message_id, note.status)),
        "type": "message.status",
        "message_id": str(note.message_id),
        "seq": seq,
        "status": note.status.value,
        "previous_status": note.previous_status.value if note.previous_status else None,
        "reason_code": note.reason_code,
        "reason": note.reason,
        "occurred_at": note.occurred_at.isoformat() if note.occurred_at else None,
        "gateway": note.gateway,
        "segments": note.segments,
        "metadata": note.metadata,
        "attempts": note.attempts,
    }


def conversation_key(tenant_id: str, phone: str) -> uuid.UUID:
    """The ordering key of a reply's outbox row: one per tenant and handset number, so the
    replies of one conversation are posted in order (it stands where a status row has its
    message id; uuid5, so it never equals a message id)."""
    return derived_event_id("reply.conversation", tenant_id, phone)


def reply_events(events: Iterable[ReplyForwardedEvent], urls: Mapping[str, str]) -> list[ReplyForwardedEvent]:
    """The replies to post, in order: those of tenants with a reply webhook (``urls``: tenant →
    the URL on its record), each event id once. The URL an event carries is never used: anything
    that can write to replies.v1 could name any URL (and have reports sign and post to it)."""
    seen: set[uuid.UUID] = set()
    out: list[ReplyForwardedEvent] = []
    for event in events:
        if event.tenant in urls and event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def build_reply_payload(event: ReplyForwardedEvent, seq: int) -> dict[str, Any]:
    """The body posted for one reply (docs/replies.md). The event id is the replies.v1 event's."""
    p = event.payload
    return {
        "event_id": str(event.event_id),
        "type": "message.reply",
        "tenant": event.tenant,
        "seq": seq,
        "from": p.phone,
        "to": p.recipient,
        "scope": p.scope,
        "body": p.body,
        "received_at": p.received_at.isoformat(),
        "gateway": p.gateway,
        "inbound_event_id": str(p.inbound_event_id),
        "conversation": [e.model_dump(mode="json") for e in p.conversation],
    }


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes posted and signed (stable: the same payload gives the same body)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_headers(secret: bytes, body: bytes, event: str, attempt: int, now: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, now),
        EVENT_ID_HEADER: event,
        ATTEMPT_HEADER: str(attempt),
    }


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float = 0.0,
              rand: Callable[[], float] = random.random) -> float:
    """Delay after failed attempt number ``attempt`` (1-based): base, 2×base, 4×base… capped,
    plus up to ``jitter`` of itself at random."""
    delay = min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 60))
    return delay * (1 + jitter * rand())


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    DEFER = "defer"  # not posted (caps, open circuit): pending again later, the attempt not counted


def classify(status_code: int) -> Outcome:
    """2xx: delivered; 408, 429 and 5xx: try again; anything else (4xx, 3xx: redirects are
    never followed): the receiver refuses, dead at once."""
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code in (408, 429) or status_code >= 500:
        return Outcome.RETRY
    return Outcome.DEAD


def url_allowed(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def host_key(url: str) -> str:
    """The receiver a URL posts to, for the per-host caps and circuits: host and port."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ""
    return f"{(parts.hostname or '').rstrip('.')}:{port}"


class Gate:
    """Which claimed rows may be posted now (pure; the worker holds one).

    Caps the posts in flight per tenant and per receiver (host and port), so one tenant or one
    slow receiver never holds every slot, and keeps a circuit per receiver: after
    ``failures`` consecutive failed posts it opens, and the receiver's rows wait (unposted) for
    ``cooldown_s``; then posts are tried again — one success closes it, one failure opens it
    again for another cooldown."""

    def __init__(self, tenant_cap: int, host_cap: int, failures: int, cooldown_s: float) -> None:
        self.tenant_cap, self.host_cap = tenant_cap, host_cap
        self.failures, self.cooldown_s = failures, cooldown_s
        self.tenants: dict[str, int] = defaultdict(int)
        self.hosts: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.open_until: dict[str, float] = {}

    def admit(self, tenant: str, host: str, now: float) -> tuple[str, float] | None:
        """None: post it (counted in flight until :meth:`done`); else why not and how long to wait."""
        until = self.open_until.get(host)
        if until is not None and now < until:
            return "circuit_open", until - now
        if self.tenants[tenant] >= self.tenant_cap:
            return "tenant_cap", 0.0
        if self.hosts[host] >= self.host_cap:
            return "host_cap", 0.0
        self.tenants[tenant] += 1
        self.hosts[host] += 1
        return None

    def done(self, tenant: str, host: str, failed: bool | None, now: float) -> bool:
        """A post admitted earlier ended: ``failed`` True (timeout, connection, 408/429/5xx),
        False (answered), None (not counted). Returns True if this opened the host's circuit."""
        for counts, key in ((self.tenants, tenant), (self.hosts, host)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        if failed is None:
            return False
        if not failed:
            self.failed.pop(host, None)
            self.open_until.pop(host, None)
            return False
        self.failed[host] += 1
        if self.failed[host] >= self.failures and not (host in self.open_until and now < self.open_until[host]):
            self.open_until[host] = now + self.cooldown_s
            return True
        return False

    def open_circuits(self, now: float) -> int:
        return sum(1 for until in self.open_until.values() if until > now)


@dataclass(frozen=True)
class OutboxRow:
    """The ordering rule, for reasoning and tests; ``WebhookStore.claim`` is its SQL."""

    message_id: uuid.UUID
    seq: int
    state: str
    next_attempt_at: float


def claimable(rows: Iterable[OutboxRow], now: float) -> list[OutboxRow]:
    """Due pending rows that are the lowest pending seq of their message. A row in flight
    stays pending (its lease pushed next_attempt_at ahead), so it blocks its successors."""
    heads: dict[uuid.UUID, OutboxRow] = {}
    for row in rows:
        if row.state == "pending" and (row.message_id not in heads or row.seq < heads[row.message_id].seq):
            heads[row.message_id] = row
    return sorted((r for r in heads.values() if r.next_attempt_at <= now), key=lambda r: r.next_attempt_at)


def head_flags(keys: Sequence[uuid.UUID], pending: Iterable[uuid.UUID]) -> list[bool]:
    """``head`` of each new outbox row, given its key (in seq order per key) and the keys that
    already have a pending row: only the first new row of a key with nothing pending is its
    key's head (claimable); the others wait until the row before them is finished."""
    busy = set(pending)
    flags: list[bool] = []
    for key in keys:
        flags.append(key not in busy)
        busy.add(key)
    return flags


@dataclass(frozen=True)
class Result:
    """What one claimed row came to, written back with the others of its batch
    (:meth:`WebhookStore.finish`). ``delay_s``: when to try again (``RETRY``); ``reason``: the
    dead letter's reason (``DEAD``)."""

    row: Mapping[str, Any]
    outcome: Outcome
    status_code: int | None
    error: str | None
    delay_s: float = 0.0
    reason: str | None = None


def finish_columns(results: Sequence[Result]) -> list[list[Any]]:
    """The arrays of :meth:`WebhookStore.finish`'s one UPDATE: id, attempts, new state, HTTP
    status, error, retry delay, attempts given back (a retry stays ``pending``; delivered clears
    the error; a deferred row stays ``pending`` with its claim's attempt given back and its
    last status and error kept)."""
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    for r in results:
        state = "pending" if r.outcome in (Outcome.RETRY, Outcome.DEFER) else r.outcome.value
        for column, value in zip(columns, (r.row["id"], r.row["attempts"], state, r.status_code,
                                           None if r.outcome is Outcome.DELIVERED else r.error, r.delay_s,
                                           1 if r.outcome is Outcome.DEFER else 0)):
            column.append(value)
    return columns


def _retry_after(value: str | None, cap: float) -> float | None:
    if value and value.strip().isdigit():
        return min(float(value.strip()), cap)
    return None


# --- the outbox in PostgreSQL -------------------------------------------------------------


async def enqueue(conn: asyncpg.Connection, notes: Sequence[Notification]) -> int:
    """Insert one outbox row per notification, seq continuing each message's last one.
    Inside ``record()``'s transaction, with the messages' rows locked."""
    if not notes:
        return 0
    ids = sorted({n.message_id for n in notes})
    rows = await conn.fetch(
        "SELECT message_id, max(seq) AS seq, bool_or(state = 'pending') AS pending FROM webhook_outbox"
        " WHERE message_id = ANY($1::uuid[]) GROUP BY message_id",
        ids,
    )
    last = {r["message_id"]: r["seq"] for r in rows}
    pending = await _lock_pending(conn, [r["message_id"] for r in rows if r["pending"]])
    columns: dict[str, list[Any]] = {k: [] for k in ("m", "s", "t", "e", "u", "p")}
    for note in notes:
        seq = last.get(note.message_id, 0) + 1
        last[note.message_id] = seq
        payload = build_payload(note, seq)
        columns["m"].append(note.message_id)
        columns["s"].append(seq)
        columns["t"].append(note.tenant_id)
        columns["e"].append(uuid.UUID(payload["event_id"]))
        columns["u"].append(note.url)
        columns["p"].append(json.dumps(payload))
    inserted = await conn.fetch(
        "INSERT INTO webhook_outbox (message_id, seq, tenant_id, event_id, url, payload, head)"
        " SELECT m, s, t, e, u, p::jsonb, h"
        " FROM unnest($1::uuid[], $2::int[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::bool[])"
        " AS x(m, s, t, e, u, p, h) ON CONFLICT DO NOTHING RETURNING message_id, head",
        *columns.values(), head_flags(columns["m"], pending),
    )
    await _headless(conn, inserted, pending)
    return len(notes)


async def _lock_pending(conn: asyncpg.Connection, keys: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Lock the pending rows of ``keys`` (in id order) and
    return the keys that still have one. A worker finishing one of them at the same time either
    commits first (the row is then not pending here) or skips the locked row and writes it once
    this transaction has committed, then sees its new rows when it picks the key's next head: a
    key is never left without a head."""
    if not keys:
        return set()
    rows = await conn.fetch(
        "SELECT message_id FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) AND state = 'pending'"
        " ORDER BY id FOR UPDATE", sorted(set(keys)))
    return {r["message_id"] for r in rows}


PROMOTE_SQL = (
    "UPDATE webhook_outbox o SET head = true FROM (SELECT DISTINCT ON (message_id) id, head"
    "  FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) AND state = 'pending'"
    "  ORDER BY message_id, seq) h"
    " WHERE o.id = h.id AND NOT h.head"
)


async def _headless(conn: asyncpg.Connection, inserted: Sequence[asyncpg.Record], pending: set[uuid.UUID]) -> None:
    """A key's first new row was a conflict (already queued) and a later one went in without
    being head: make the key's lowest pending row its head (rare; normally nothing to do)."""
    keys = {r["message_id"] for r in inserted} - pending - {r["message_id"] for r in inserted if r["head"]}
    if keys:
        await conn.execute(PROMOTE_SQL, sorted(keys))


async def reply_urls(conn: asyncpg.Connection, tenants: set[str]) -> dict[str, str]:
    """The reply webhook URL on each tenant's record (tenants without one, or disabled, are absent)."""
    rows = await conn.fetch(
        "SELECT tenant_id, reply_webhook_url FROM tenants WHERE tenant_id = ANY($1::text[])"
        " AND reply_webhook_url IS NOT NULL AND disabled_at IS NULL", sorted(tenants))
    return {r["tenant_id"]: r["reply_webhook_url"] for r in rows}


async def enqueue_replies(conn: asyncpg.Connection, events: Sequence[ReplyForwardedEvent]) -> int:
    """Insert one outbox row per reply of a tenant with a reply webhook (the URL from its record,
    never from the event), in one statement, and return how many are new. A redelivered reply (its event id already queued) adds nothing.

    Seqs come from ``webhook_sequences`` (one upsert for the batch, conversations in sorted
    order): its row locks hold a conversation until this transaction commits, so two
    instances never give out the same seq, and the seq goes on growing after the outbox's
    delivered rows are pruned."""
    urls = await reply_urls(conn, {e.tenant for e in events})
    wanted = reply_events(events, urls)
    if not wanted:
        return 0
    queued = {r["event_id"] for r in await conn.fetch(
        "SELECT event_id FROM webhook_outbox WHERE event_id = ANY($1::uuid[])", [e.event_id for e in wanted])}
    fresh = [e for e in wanted if e.event_id not in queued]
    if not fresh:
        return 0
    keys = [conversation_key(e.tenant, e.payload.phone) for e in fresh]
    counts: dict[uuid.UUID, int] = defaultdict(int)
    for key in keys:
        counts[key] += 1
    order = sorted(counts)
    rows = await conn.fetch(
        "INSERT INTO webhook_sequences (message_id, seq) SELECT k, n FROM unnest($1::uuid[], $2::int[]) AS x(k, n)"
        " ON CONFLICT (message_id) DO UPDATE SET seq = webhook_sequences.seq + excluded.seq RETURNING message_id, seq",
        order, [counts[k] for k in order],
    )
    last = {r["message_id"]: r["seq"] - counts[r["message_id"]] for r in rows}  # the seq before this batch's
    pending = await _lock_pending(conn, order)
    columns: dict[str, list[Any]] = {k: [] for k in ("m", "s", "t", "e", "u", "p")}
    for event, key in zip(fresh, keys, strict=True):
        last[key] += 1
        columns["m"].append(key)
        columns["s"].append(last[key])
        columns["t"].append(event.tenant)
        columns["e"].append(event.event_id)
        columns["u"].append(urls[event.tenant])
        columns["p"].append(json.dumps(build_reply_payload(event, last[key])))
    inserted = await conn.fetch(
        "INSERT INTO webhook_outbox (message_id, seq, tenant_id, event_id, url, payload, kind, head)"
        " SELECT m, s, t, e, u, p::jsonb, 'reply', h"
        " FROM unnest($1::uuid[], $2::int[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::bool[])"
        " AS x(m, s, t, e, u, p, h) ON CONFLICT DO NOTHING RETURNING message_id, head",
        *columns.values(), head_flags(columns["m"], pending),
    )
    await _headless(conn, inserted, pending)
    return len(inserted)


class ReplyWebhookHandler:
    """reports' replies lane: each batch of ``replies.v1`` events → outbox rows, one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        events = [i.event for i in batch if isinstance(i.event, ReplyForwardedEvent)]
        if not events:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            queued = await enqueue_replies(conn, events)
        if queued:
            metrics.REPLY_WEBHOOKS_QUEUED.inc(queued)
        return []


def new_secret() -> str:
    return SECRET_PREFIX + secrets_module.token_urlsafe(32)


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, limit: int, lease_s: float) -> list[asyncpg.Record]:
        """Take up to ``limit`` due rows, each the lowest pending seq of its key, and push them
        one lease ahead (so no one else takes them while they are posted).

        Only heads are read (``webhook_outbox_head_due``: due heads in claim order), so the
        scan stops after about ``limit`` entries, whatever waits behind heads in flight or
        backing off; the NOT EXISTS probe (one index lookup per head) keeps the order even
        where a row is marked head too early (docs/webhooks.md)."""
        return await self.pool.fetch(
            "WITH due AS ("
            " SELECT o.id FROM webhook_outbox o"
            " WHERE o.state = 'pending' AND o.head AND o.next_attempt_at <= now()"
            "  AND NOT EXISTS (SELECT 1 FROM webhook_outbox p"
            "   WHERE p.message_id = o.message_id AND p.state = 'pending' AND p.seq < o.seq)"
            " ORDER BY o.next_attempt_at, o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED)"
            " UPDATE webhook_outbox o SET attempts = o.attempts + 1,"
            "  next_attempt_at = now() + make_interval(secs => $2)"
            " FROM due WHERE o.id = due.id"
            " RETURNING o.id, o.message_id, o.seq, o.tenant_id, o.event_id, o.url, o.payload, o.attempts, o.created_at,"
            " o.kind",
            limit, lease_s,
        )

    async def finish(self, results: Sequence[Result]) -> list[Result]:
        """Write a batch of results back in one transaction: delivered and dead rows finished,
        retries pushed to their next attempt (only if not claimed again meanwhile), then the
        next pending row of every finished key made its head.

        Rows locked elsewhere are skipped and returned, to be written again shortly: reports
        locks a key's pending rows while it queues more behind them (``enqueue()``, possibly
        in several statements of one transaction), and a worker that waited for those locks
        while holding others could deadlock with it. It never waits: once that transaction
        commits, the row is written and its key's next head chosen among the new rows."""
        if not results:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            locked = {r["id"] for r in await conn.fetch(
                "SELECT id FROM webhook_outbox WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED",
                [r.row["id"] for r in results])}
            now = [r for r in results if r.row["id"] in locked]
            if not now:
                return list(results)
            written = await conn.fetch(
                "UPDATE webhook_outbox o SET state = x.state, attempts = o.attempts - x.undo,"
                " last_status = CASE WHEN x.undo = 1 THEN o.last_status ELSE x.code END,"
                " last_error = CASE WHEN x.undo = 1 THEN o.last_error ELSE x.error END,"
                " finished_at = CASE WHEN x.state = 'pending' THEN NULL ELSE now() END,"
                " next_attempt_at = CASE WHEN x.state = 'pending' THEN now() + make_interval(secs => x.delay)"
                "  ELSE o.next_attempt_at END"
                " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::float8[], $7::int[])"
                "  AS x(id, attempts, state, code, error, delay, undo)"
                " WHERE o.id = x.id AND o.state = 'pending' AND (x.state <> 'pending' OR o.attempts = x.attempts)"
                " RETURNING o.message_id, o.state",
                *finish_columns(now),
            )
            finished = sorted({r["message_id"] for r in written if r["state"] != "pending"})
            if finished:
                await conn.execute(PROMOTE_SQL, finished)
        return [r for r in results if r.row["id"] not in locked]

    async def secrets(self, tenants: Iterable[str]) -> dict[str, str]:
        """Each tenant's signing secret, created on first use."""
        wanted = sorted(set(tenants))
        if not wanted:
            return {}
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO webhook_secrets (tenant_id, secret)"
                " SELECT t, s FROM unnest($1::text[], $2::text[]) AS x(t, s) ON CONFLICT DO NOTHING",
                wanted, [new_secret() for _ in wanted],
            )
            rows = await conn.fetch("SELECT tenant_id, secret FROM webhook_secrets WHERE tenant_id = ANY($1::text[])", wanted)
        return {r["tenant_id"]: r["secret"] for r in rows}

    async def depth(self) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM webhook_outbox WHERE state = 'pending'")

    async def prune(self, retention_h: float, limit: int = 10_000) -> int:
        result = await self.pool.execute(
            "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox WHERE state = 'delivered'"
            " AND finished_at < now() - make_interval(secs => $1) LIMIT $2)",
            retention_h * 3600, limit,
        )
        return int(result.split()[-1])


# --- the worker -----------------------------------------------------------------------------


def _kind(row: Mapping[str, Any]) -> str:
    return str(row.get("kind") or Kind.STATUS.value)


class EgressRefused(OSError):
    """A webhook's host resolved to an address webhooks may not reach (shared/egress.py)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host} resolves to an address webhooks may not reach ({reason})")
        self.reason = reason


class CheckedResolver(AbstractResolver):
    """The worker client's resolver: resolves a name once and refuses the answer if any of its
    addresses may not be reached. The connector connects to exactly the addresses returned
    here (no second lookup, so a name cannot pass the check and then resolve elsewhere),
    with the URL's host name kept for the Host header and TLS SNI. Address literals never
    reach a resolver: :meth:`WebhookWorker.post` checks them first (:func:`url_refusal`)."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> Any:
        infos = await self.inner.resolve(host, port, family)  # type: ignore[arg-type]
        reason = addresses_refusal([info["host"] for info in infos], self.policy)
        if reason is not None:
            raise EgressRefused(host, reason)
        return infos

    async def close(self) -> None:
        await self.inner.close()


def make_client(timeout_s: float, concurrency: int, policy: EgressPolicy | None = None,
                proxy: str | None = None) -> aiohttp.ClientSession:
    """The one HTTP client of a worker: a pool of keep-alive connections (``concurrency`` at
    most, the posts in flight), each POST bounded as a whole by ``timeout_s`` (connect, write
    and every read together: a receiver trickling its answer cannot hold a slot longer).
    Names are resolved through :class:`CheckedResolver` (unless posts go through ``proxy``,
    which then does the egress filtering). Call it inside the event loop that uses it."""
    resolver = CheckedResolver(policy) if policy is not None and not proxy else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=300, resolver=resolver),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        auto_decompress=False,
    )


class WebhookWorker:
    """Claims due outbox rows and posts them, ``concurrency`` at a time, through one pooled
    client; the results of the posts that ended since the last round trip are written back in
    one transaction (:meth:`WebhookStore.finish`) before the next claim."""

    def __init__(self, pool: asyncpg.Pool, settings: Any, *, rand: Callable[[], float] = random.random,
                 housekeeping_s: float = 5.0) -> None:
        self.store = WebhookStore(pool)
        self.s = settings
        self.rand = rand
        self.housekeeping_s = housekeeping_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a post ended, or stop
        self._secrets: dict[str, tuple[bytes, float]] = {}
        self.policy = EgressPolicy.of(settings)
        self.proxy: str | None = getattr(settings, "webhook_proxy", None)
        self.gate = Gate(getattr(settings, "webhook_tenant_concurrency", settings.webhook_concurrency),
                         getattr(settings, "webhook_host_concurrency", settings.webhook_concurrency),
                         getattr(settings, "webhook_circuit_failures", 5),
                         getattr(settings, "webhook_circuit_cooldown_s", 30.0))

    def client(self) -> aiohttp.ClientSession:
        return make_client(self.s.webhook_timeout_s, self.s.webhook_concurrency, self.policy, self.proxy)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def lease_s(self) -> float:
        """Never shorter than a POST can take, or a slow post would be claimed twice."""
        return max(self.s.webhook_lease_s, 2 * self.s.webhook_timeout_s + 1)

    async def _secrets_for(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, bytes]:
        """The signing secret of each tenant of ``rows``: cached, the missing ones in one query."""
        now = time.monotonic()
        wanted = {r["tenant_id"] for r in rows}
        stale = [t for t in wanted if t not in self._secrets or now - self._secrets[t][1] >= SECRET_CACHE_S]
        if stale:
            for tenant, secret in (await self.store.secrets(stale)).items():
                self._secrets[tenant] = (secret.encode(), now)
        return {t: self._secrets[t][0] for t in wanted}

    async def post(self, client: aiohttp.ClientSession, row: Mapping[str, Any], secret: bytes) -> Result:
        """Post one claimed row; say what to write back (nothing is written here)."""
        url, attempt, kind = row["url"], row["attempts"], _kind(row)
        refusal = url_refusal(url, self.policy)
        if refusal == URL_INVALID:
            metrics.WEBHOOK_POSTS.labels(kind, Outcome.DEAD.value).inc()
            return Result(row, Outcome.DEAD, None, "only http and https URLs with a host are posted", reason="invalid_url")
        if refusal is not None:  # queued before the rule, or under other settings: never posted
            metrics.WEBHOOK_POSTS.labels(kind, Outcome.DEAD.value).inc()
            return Result(row, Outcome.DEAD, None, f"destination refused: {refusal}", reason=refusal)
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        body = encode(payload)
        headers = build_headers(secret, body, str(row["event_id"]), attempt, int(time.time()))
        started = time.monotonic()
        status_code: int | None = None
        retry_after: str | None = None
        try:
            async with client.post(url, data=body, headers=headers, allow_redirects=False,
                                   proxy=self.proxy) as response:
                status_code = response.status
                retry_after = response.headers.get("Retry-After")
                if response.content_length is not None and response.content_length <= MAX_ANSWER_BYTES:
                    await response.read()  # read to the end, so the connection goes back to the pool
            outcome = classify(status_code)
            reason = "ok" if outcome is Outcome.DELIVERED else f"http_{status_code}"
            error = None if outcome is Outcome.DELIVERED else f"HTTP {status_code}"
        except TimeoutError as exc:
            outcome, reason, error = Outcome.RETRY, "timeout", f"timeout ({type(exc).__name__})"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, EgressRefused):  # the name resolved to a refused address
                metrics.WEBHOOK_POSTS.labels(kind, Outcome.DEAD.value).inc()
                return Result(row, Outcome.DEAD, None, f"destination refused: {exc.os_error}"[:300],
                              reason=exc.os_error.reason)
            outcome, reason, error = Outcome.RETRY, "connection", f"ConnectError: {exc}"[:300]
        except (aiohttp.ClientError, OSError) as exc:
            outcome, reason, error = Outcome.RETRY, "connection", f"{type(exc).__name__}: {exc}"[:300]
        metrics.WEBHOOK_SECONDS.labels(outcome.value).observe(time.monotonic() - started)
        metrics.WEBHOOK_POSTS.labels(kind, outcome.value).inc()
        if outcome is Outcome.DELIVERED:
            occurred = payload.get("occurred_at") or payload.get("received_at")
            if occurred:
                lag = time.time() - datetime.fromisoformat(occurred).timestamp()
                metrics.WEBHOOK_LAG.observe(max(0.0, lag))
            return Result(row, outcome, status_code, None)
        if outcome is Outcome.DEAD:
            return Result(row, outcome, status_code, error or "refused",
                          reason="redirect" if status_code and status_code < 400 else "refused")
        metrics.WEBHOOKS_FAILED_ATTEMPTS.labels("http_5xx" if reason.startswith("http_5") else reason).inc()
        if attempt >= self.s.webhook_max_attempts:
            return Result(row, Outcome.DEAD, status_code, f"{error} after {attempt} attempts", reason="exhausted")
        delay = backoff_s(attempt, self.s.webhook_backoff_base_s, self.s.webhook_backoff_max_s,
                          self.s.webhook_backoff_jitter, self.rand)
        hinted = _retry_after(retry_after, self.s.webhook_backoff_max_s) if status_code in (429, 503) else None
        return Result(row, outcome, status_code, error or reason, delay_s=max(delay, hinted or 0.0))

    async def _post_logged(self, client: aiohttp.ClientSession, row: Mapping[str, Any], secret: bytes) -> Result | None:
        result: Result | None = None
        try:
            result = await self.post(client, row, secret)
            return result
        except Exception:
            # the lease runs out and the row is posted again (receivers deduplicate by event id)
            log.exception("%s webhook delivery failed", _kind(row), extra={"event_id": str(row["event_id"])})
            return None
        finally:
            self._ended(row, result)

    def _ended(self, row: Mapping[str, Any], result: Result | None) -> None:
        """Give the post's slots back and feed the receiver's circuit."""
        failed: bool | None = None
        if result is not None:
            if result.outcome is Outcome.RETRY or result.reason == "exhausted":
                failed = True
            elif result.status_code is not None:
                failed = False  # it answered (2xx, or a refusal: the receiver is up)
        now = time.monotonic()
        host = host_key(row["url"])
        if self.gate.done(row["tenant_id"], host, failed, now):
            metrics.WEBHOOK_CIRCUITS_OPENED.inc()
            log.warning("webhook circuit opened", extra={"host": host.rsplit(":", 1)[0],
                                                          "cooldown_s": self.gate.cooldown_s})
        metrics.WEBHOOK_CIRCUITS_OPEN.set(self.gate.open_circuits(now))

    def _admit(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Result]]:
        """Split claimed rows into those to post now and those put back unposted (tenant or
        receiver at its cap of posts in flight, or the receiver's circuit open)."""
        now = time.monotonic()
        go: list[Mapping[str, Any]] = []
        later: list[Result] = []
        for row in rows:
            verdict = self.gate.admit(row["tenant_id"], host_key(row["url"]), now)
            if verdict is None:
                go.append(row)
                continue
            why, wait = verdict
            metrics.WEBHOOKS_DEFERRED.labels(why).inc()
            later.append(Result(row, Outcome.DEFER, None, why, delay_s=max(wait, DEFER_S)))
        return go, later

    async def write(self, results: list[Result]) -> list[Result]:
        """Write a batch of results back (one transaction), then count and log them. Returns
        those whose rows were locked elsewhere, to write again."""
        if not results:
            return []
        try:
            later = await self.store.finish(results)
        except Exception:
            # their leases run out and they are posted again (receivers deduplicate by event id)
            log.exception("recording webhook results failed", extra={"rows": len(results)})
            return []
        waiting = {id(r) for r in later}
        for r in results:
            if id(r) in waiting:
                continue
            if r.outcome is Outcome.DELIVERED:
                metrics.WEBHOOKS_DELIVERED.inc()
            elif r.outcome is Outcome.DEAD:
                metrics.WEBHOOKS_DEAD_LETTERS.labels(r.reason or "refused").inc()
                row = r.row
                log.warning("%s webhook dead-lettered", _kind(row), extra={
                    "message_id": str(row["message_id"]), "event_id": str(row["event_id"]), "seq": row["seq"],
                    "reason": r.reason, "error": r.error, "host": urlsplit(row["url"]).hostname,
                    "attempts": row["attempts"],
                })
        return later

    async def _start(self, client: aiohttp.ClientSession, rows: Sequence[Mapping[str, Any]],
                     spawn: Callable[[Any], None]) -> list[Result]:
        """Start posting the claimed rows that may go now; return the others (deferred), to write."""
        if not rows:
            return []
        try:
            secrets = await self._secrets_for(rows)
        except Exception:
            log.exception("reading webhook signing secrets failed")  # the claimed rows' leases run out
            return []
        go, later = self._admit(rows)
        for row in go:
            spawn(self._post_logged(client, row, secrets[row["tenant_id"]]))
        return later

    async def run_once(self, client: aiohttp.ClientSession | None = None) -> int:
        """Claim what is due now, post it all and write the results (tests, and a manual drain)."""
        own = client is None
        client = client or self.client()
        try:
            rows = await self.store.claim(self.s.webhook_concurrency, self.lease_s)
            posts: list[Any] = []
            deferred = await self._start(client, rows, posts.append)
            left = [r for r in await asyncio.gather(*posts) if r is not None] + deferred
            deadline = time.monotonic() + self.lease_s
            while left and time.monotonic() < deadline:
                left = await self.write(left)
                if left:
                    await asyncio.sleep(0.01)
            return len(rows)
        finally:
            if own:
                await client.close()

    async def _housekeeping(self) -> None:
        try:
            await self.store.prune(self.s.webhook_retention_h)
            metrics.WEBHOOK_OUTBOX_DEPTH.set(await self.store.depth())
        except Exception:
            log.exception("webhook outbox housekeeping failed")

    async def run(self) -> None:
        client = self.client()
        inflight: set[asyncio.Task[Result | None]] = set()
        ended: list[Result] = []  # posted, not written back yet

        def collect(task: asyncio.Task[Result | None]) -> None:
            inflight.discard(task)
            if not task.cancelled() and task.exception() is None and task.result() is not None:
                ended.append(task.result())  # type: ignore[arg-type]
            self._wake.set()

        def spawn(post: Any) -> None:
            task = asyncio.create_task(post)
            inflight.add(task)
            task.add_done_callback(collect)

        last_housekeeping = 0.0
        timed_out = True
        batch = max(1, self.s.webhook_concurrency // 4)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if time.monotonic() - last_housekeeping >= self.housekeeping_s:
                    last_housekeeping = time.monotonic()
                    await self._housekeeping()
                # the posts that ended since the last round trip, written together (their keys'
                # next rows become claimable); more end meanwhile, so batches grow with the load
                if ended:
                    done, ended[:] = list(ended), []
                    ended += await self.write(done)
                free = self.s.webhook_concurrency - len(inflight)
                # claim in batches when busy: one claim query per freed slot would cost more than the posts
                if free > 0 and (timed_out or free >= batch or not inflight):
                    try:
                        rows = await self.store.claim(free, self.lease_s)
                    except Exception:
                        log.exception("claiming webhooks failed")
                        rows = []
                    ended += await self._start(client, rows, spawn)
                # wake when a post ends (its result to write, its key's next seq to claim), on stop, or to poll
                try:  # results left to write (rows locked elsewhere for a moment): look again soon
                    await asyncio.wait_for(self._wake.wait(), timeout=min(self.s.webhook_poll_interval_s, 0.02)
                                           if ended else self.s.webhook_poll_interval_s)
                    timed_out = False
                except TimeoutError:
                    timed_out = True
        finally:
            if inflight:
                await asyncio.wait(inflight, timeout=self.s.webhook_timeout_s + 1)
                for task in list(inflight):
                    task.cancel()
            left, deadline = list(ended), time.monotonic() + self.s.webhook_timeout_s
            while left and time.monotonic() < deadline:  # what was posted is recorded before stopping
                left = await self.write(left)
                if left:
                    await asyncio.sleep(0.01)
            await client.close()


# --- python -m services.reports.webhooks secret TENANT ---------------------------------------


async def _print_secret(tenant: str) -> None:
    from services.reports.settings import ReportsSettings
    from shared.db import create_pool

    pool = await create_pool(ReportsSettings(), timeout_s=10)
    try:
        print((await WebhookStore(pool).secrets([tenant]))[tenant])
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "secret":
        print("usage: python -m services.reports.webhooks secret TENANT", file=sys.stderr)
        return 2
    asyncio.run(_print_secret(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
