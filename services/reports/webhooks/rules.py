"""Status and reply webhooks, the pure parts: what to post for a batch of state changes, the
bodies and headers, the ordering rule of the outbox, the retry delays, and the gate that caps
posts in flight per tenant and receiver. No I/O here (the outbox's SQL is in repository.py,
the HTTP worker in worker.py). See docs/webhooks.md and docs/replies.md.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from services.reports.domain import Change, MessageState, Transition
from shared.contracts import ReplyForwardedEvent, derived_event_id
from shared.signatures import HEADER as SIGNATURE_HEADER
from shared.signatures import sign
from shared.statuses import RANK, SETTLED, Status

EVENT_ID_HEADER = "X-Herald-Event-Id"
ATTEMPT_HEADER = "X-Herald-Delivery-Attempt"



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
                                           1 if r.outcome is Outcome.DEFER else 0), strict=True):
            column.append(value)
    return columns

