"""How events change a message's recorded state. Pure: no I/O, time comes with the events.

Rules: a status only moves forward (by rank); the first final status wins; descriptive
fields are filled by whichever event brings them first; every event lands in the timeline
once (by event id). Events may arrive in any order across topics.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shared.contracts import (
    DeliveryReceipt,
    MessageAccepted,
    MessageStatusChanged,
)
from shared.statuses import FINAL, RANK, RECEIPT_TO_STATUS, Status

DESCRIPTIVE = (
    "to_e164", "country", "type", "sender", "encoding", "segments", "source",
    "idempotency_key", "metadata", "status_callback_url",
)


@dataclass(frozen=True)
class MessageState:
    message_id: uuid.UUID
    tenant_id: str
    status: Status = Status.ACCEPTED
    rank: int = 0  # 0: nothing known yet (a placeholder row)
    fields: dict[str, Any] = field(default_factory=dict)
    reason_code: str | None = None
    reason: str | None = None
    gateway: str | None = None
    gateway_message_id: str | None = None
    accepted_at: datetime | None = None
    submitted_at: datetime | None = None
    final_at: datetime | None = None


@dataclass(frozen=True)
class Change:
    """One event's effect on one message."""

    event_id: uuid.UUID
    message_id: uuid.UUID
    tenant_id: str
    occurred_at: datetime
    status: Status | None  # None: timeline only (e.g. an 'enroute' receipt)
    timeline_status: str
    detail: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    reason_code: str | None = None
    reason: str | None = None
    gateway: str | None = None
    gateway_message_id: str | None = None


@dataclass(frozen=True)
class Transition:
    message_id: uuid.UUID
    old: Status | None
    new: Status
    state: MessageState


def from_accepted(event_id: uuid.UUID, tenant: str, m: MessageAccepted) -> Change:
    return Change(
        event_id=event_id,
        message_id=m.message_id,
        tenant_id=tenant,
        occurred_at=m.accepted_at,
        status=Status.ACCEPTED,
        timeline_status=Status.ACCEPTED.value,
        detail={"source": m.source, "segments": m.segments, "encoding": m.encoding},
        fields={
            "to_e164": m.to, "country": m.country, "type": m.type.value, "sender": m.sender,
            "encoding": m.encoding, "segments": m.segments, "source": m.source,
            "idempotency_key": m.idempotency_key, "metadata": m.metadata,
            "status_callback_url": m.status_callback_url,
        },
    )


def from_status(event_id: uuid.UUID, tenant: str, occurred_at: datetime, s: MessageStatusChanged) -> Change:
    detail = {k: v for k, v in {
        "reason_code": s.reason_code, "reason": s.reason, "gateway": s.gateway,
        "gateway_message_id": s.gateway_message_id, "attempts": s.attempts or None,
    }.items() if v is not None} | dict(s.detail)
    fields: dict[str, Any] = {}
    if s.type is not None:
        fields["type"] = s.type.value
    if s.segments is not None:
        fields["segments"] = s.segments
    return Change(
        event_id=event_id, message_id=s.message_id, tenant_id=tenant, occurred_at=occurred_at,
        status=s.status, timeline_status=s.status.value, detail=detail, fields=fields,
        reason_code=s.reason_code, reason=s.reason, gateway=s.gateway, gateway_message_id=s.gateway_message_id,
    )


def from_receipt(event_id: uuid.UUID, message_id: uuid.UUID, tenant: str, occurred_at: datetime, r: DeliveryReceipt) -> Change:
    status = RECEIPT_TO_STATUS[r.status]
    failed = status in (Status.UNDELIVERED, Status.FAILED, Status.EXPIRED)
    detail = {k: v for k, v in {
        "receipt": r.status.value, "error_code": r.error_code, "raw_status": r.raw_status,
        "gateway": r.gateway, "gateway_message_id": r.gateway_message_id,
    }.items() if v is not None}
    return Change(
        event_id=event_id, message_id=message_id, tenant_id=tenant,
        occurred_at=r.done_at or occurred_at, status=status,
        timeline_status=status.value if status else f"receipt_{r.status.value}", detail=detail,
        reason_code=f"receipt_{r.status.value}" if failed else None,
        reason=f"gateway error code {r.error_code}" if failed and r.error_code else None,
    )


def apply(state: MessageState, changes: list[Change]) -> tuple[MessageState, list[Transition]]:
    """Fold ``changes`` into ``state``; return the new state and the status transitions."""
    transitions: list[Transition] = []
    ordered = sorted(changes, key=lambda c: (RANK[c.status] if c.status else -1, c.occurred_at))
    for change in ordered:
        updates: dict[str, Any] = {}
        merged = dict(state.fields)
        for key, value in change.fields.items():
            if merged.get(key) is None and value is not None:
                merged[key] = value
        updates["fields"] = merged
        if change.status is Status.ACCEPTED and state.accepted_at is None:
            updates["accepted_at"] = change.occurred_at
        if change.status is Status.SUBMITTED and state.submitted_at is None:
            updates["submitted_at"] = change.occurred_at
        if change.gateway and state.gateway is None:
            updates["gateway"] = change.gateway
        if change.gateway_message_id and state.gateway_message_id is None:
            updates["gateway_message_id"] = change.gateway_message_id
        final_rank = RANK[Status.DELIVERED]
        if change.status is not None and state.rank < final_rank and RANK[change.status] > state.rank:
            updates["status"] = change.status
            updates["rank"] = RANK[change.status]
            if change.status in FINAL:
                updates["final_at"] = change.occurred_at
                updates["reason_code"] = change.reason_code
                updates["reason"] = change.reason
            new_state = replace(state, **updates)
            transitions.append(Transition(state.message_id, state.status if state.rank else None, change.status, new_state))
            state = new_state
        else:
            state = replace(state, **updates)
    return state, transitions
