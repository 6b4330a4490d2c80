"""How events change a message's recorded state. Pure: no I/O, time comes with the events.

Rules: a status only moves forward (by rank); the first final status wins (``unknown``
ranks below ``submitted``: a later submission or receipt moves it on); descriptive
fields are filled by whichever event brings them first; every event lands in the timeline
once (by event id). Events may arrive in any order across topics.

A concatenated message (its submission lists ``gateway_part_ids``) gets one receipt per
part: it is delivered when every part's receipt says delivered, and undelivered / failed /
expired as soon as one part's does. A part receipt that does not decide the message shows
in the timeline as ``part_<status>``.
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
from shared.statuses import FINAL, RANK, RECEIPT_TO_STATUS, SETTLED, Status

DESCRIPTIVE = (
    "to_e164", "country", "type", "sender", "encoding", "segments", "source",
    "idempotency_key", "metadata", "status_callback_url",
    "contact_id", "campaign_id", "variant", "journey_id", "template_id", "template_version",
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
    part_ids: tuple[str, ...] = ()  # a concatenated message's parts (from its submission)
    # part id → {"status": first final status of its receipt, "at": the receipt's time (ISO 8601)}
    part_status: dict[str, dict[str, str]] = field(default_factory=dict)


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
    part_ids: tuple[str, ...] = ()  # a submission: every part's gateway id
    part_id: str | None = None  # a receipt: the gateway id it is about


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
        # a pool's sender: which one, and from which it fell back and why (docs/senders.md)
        detail={"source": m.source, "segments": m.segments, "encoding": m.encoding, **m.sender_choice},
        fields={
            "to_e164": m.to, "country": m.country, "type": m.type.value, "sender": m.sender,
            "encoding": m.encoding, "segments": m.segments, "source": m.source,
            "idempotency_key": m.idempotency_key, "metadata": m.metadata,
            "status_callback_url": m.status_callback_url,
            "contact_id": m.contact_id, "campaign_id": m.campaign_id, "variant": m.variant,
            "journey_id": m.journey_id, "template_id": m.template_id, "template_version": m.template_version,
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
    if s.campaign_id is not None:  # a campaign contact refused at the launch: counted in its campaign's report
        fields |= {"campaign_id": s.campaign_id, "variant": s.variant, "contact_id": s.contact_id}
    return Change(
        event_id=event_id, message_id=s.message_id, tenant_id=tenant, occurred_at=occurred_at,
        status=s.status, timeline_status=s.status.value, detail=detail, fields=fields,
        reason_code=s.reason_code, reason=s.reason, gateway=s.gateway, gateway_message_id=s.gateway_message_id,
        part_ids=tuple(s.gateway_part_ids) if len(s.gateway_part_ids) > 1 else (),
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
        part_id=r.gateway_message_id,
    )


def _part_verdict(
    state: MessageState, change: Change
) -> tuple[Status | None, datetime, dict[str, dict[str, str]] | None]:
    """For a receipt about one part of a concatenated message: the message's status it implies
    (None: undecided yet), when (the last part's receipt, for delivered), and the updated part
    statuses. (change.status, change.occurred_at, None) for any other change."""
    if (
        change.part_id is None or change.status is None or change.status not in FINAL
        or len(state.part_ids) < 2 or change.part_id not in state.part_ids
    ):
        return change.status, change.occurred_at, None
    parts = dict(state.part_status)
    # a part's first final receipt counts
    parts.setdefault(change.part_id, {"status": change.status.value, "at": change.occurred_at.isoformat()})
    if change.status is not Status.DELIVERED:
        return change.status, change.occurred_at, parts  # one part lost: the message is not (wholly) delivered
    if all(parts.get(p, {}).get("status") == Status.DELIVERED.value for p in state.part_ids):
        return Status.DELIVERED, max(datetime.fromisoformat(parts[p]["at"]) for p in state.part_ids), parts
    return None, change.occurred_at, parts


def apply(state: MessageState, changes: list[Change]) -> tuple[MessageState, list[Transition]]:
    """Fold ``changes`` into ``state``; return the new state and the status transitions."""
    state, transitions, _ = fold(state, changes)
    return state, transitions


def fold(state: MessageState, changes: list[Change]) -> tuple[MessageState, list[Transition], list[Change]]:
    """Like :func:`apply`, and also the changes as the timeline should show them (a part
    receipt that did not decide its message becomes ``part_<status>``)."""
    transitions: list[Transition] = []
    timeline: list[Change] = []
    ordered = sorted(changes, key=lambda c: (RANK[c.status] if c.status else -1, c.occurred_at))
    for change in ordered:
        updates: dict[str, Any] = {}
        merged = dict(state.fields)
        for key, value in change.fields.items():
            if merged.get(key) is None and value is not None:
                merged[key] = value
        updates["fields"] = merged
        if change.part_ids and not state.part_ids:
            updates["part_ids"] = change.part_ids
            state = replace(state, part_ids=change.part_ids)
        status, status_at, parts = _part_verdict(state, change)
        if parts is not None:
            updates["part_status"] = parts
            if status is None or state.rank >= RANK[Status.DELIVERED]:
                change = replace(change, timeline_status=f"part_{change.status.value}")  # type: ignore[union-attr]
        timeline.append(change)
        if change.status is Status.ACCEPTED and state.accepted_at is None:
            updates["accepted_at"] = change.occurred_at
        if change.status is Status.SUBMITTED and state.submitted_at is None:
            updates["submitted_at"] = change.occurred_at
        if change.gateway and state.gateway is None:
            updates["gateway"] = change.gateway
        if change.gateway_message_id and state.gateway_message_id is None:
            updates["gateway_message_id"] = change.gateway_message_id
        final_rank = RANK[Status.DELIVERED]
        if status is not None and state.rank < final_rank and RANK[status] > state.rank:
            updates["status"] = status
            updates["rank"] = RANK[status]
            if status in SETTLED:
                updates["final_at"] = status_at
                updates["reason_code"] = change.reason_code
                updates["reason"] = change.reason
            elif state.status is Status.UNKNOWN:
                # unknown resolved (the gateway had it after all): no longer an end state
                updates["final_at"] = updates["reason_code"] = updates["reason"] = None
            new_state = replace(state, **updates)
            transitions.append(Transition(state.message_id, state.status if state.rank else None, status, new_state))
            state = new_state
        else:
            state = replace(state, **updates)
    return state, transitions, timeline
