"""Status ``unknown`` (the gateway may or may not have the message), the pure parts: its rank,
how the reports fold ends in it and leaves it, its webhook, campaign counts, and how an HTTP
answer after sending is classified (retry at once, refusal, or unknown)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.dispatcher.gateways.base import Refused, Unknown, http_error_outcome
from services.reports.campaign_report import build
from services.reports.domain import MessageState, apply, from_accepted, from_receipt, from_status
from services.reports.webhooks.rules import build_payload, notifications
from shared.statuses import FINAL, RANK, SETTLED, ReceiptStatus, Status
from tests import factories

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MID = uuid.uuid4()
URL = "https://hooks.example.com/h"


def accepted():
    return from_accepted(uuid.uuid4(), "acme", factories.accepted(
        message_id=MID, type="transactional", accepted_at=T0, status_callback_url=URL))


def unknown(seconds: float = 1):
    return from_status(uuid.uuid4(), "acme", T0 + timedelta(seconds=seconds), factories.status(
        MID, Status.UNKNOWN, gateway="smsc", attempts=1, reason_code="submit_outcome_unknown", reason="cannot tell"))


def submitted(seconds: float = 2):
    return from_status(uuid.uuid4(), "acme", T0 + timedelta(seconds=seconds), factories.status(
        MID, Status.SUBMITTED, gateway="smsc", gateway_message_id="g1", attempts=1))


def receipt(status: ReceiptStatus, seconds: float = 3):
    return from_receipt(uuid.uuid4(), MID, "acme", T0, factories.receipt(
        status, "smsc", "g1", done_at=T0 + timedelta(seconds=seconds)))


def blank() -> MessageState:
    return MessageState(message_id=MID, tenant_id="acme")


def test_unknown_is_an_end_state_but_not_final() -> None:
    assert Status.UNKNOWN not in FINAL and Status.UNKNOWN in SETTLED
    assert RANK[Status.SCHEDULED] < RANK[Status.UNKNOWN] < RANK[Status.SUBMITTED] < RANK[Status.DELIVERED]


def test_unknown_ends_a_message_with_its_reason() -> None:
    state, moves = apply(blank(), [accepted(), unknown()])
    assert state.status is Status.UNKNOWN and [t.new for t in moves] == [Status.ACCEPTED, Status.UNKNOWN]
    assert (state.reason_code, state.final_at) == ("submit_outcome_unknown", T0 + timedelta(seconds=1))


def test_a_later_receipt_moves_unknown_on() -> None:
    state, _ = apply(blank(), [accepted(), unknown()])
    state, moves = apply(state, [receipt(ReceiptStatus.DELIVERED)])
    assert state.status is Status.DELIVERED and [(t.old, t.new) for t in moves] == [(Status.UNKNOWN, Status.DELIVERED)]
    assert (state.reason_code, state.final_at) == (None, T0 + timedelta(seconds=3))


def test_a_lookup_that_found_it_makes_it_submitted_again() -> None:
    state, _ = apply(blank(), [accepted(), unknown()])
    state, moves = apply(state, [submitted()])
    assert state.status is Status.SUBMITTED and state.gateway_message_id == "g1"
    assert (state.reason_code, state.reason, state.final_at) == (None, None, None)
    state, _ = apply(state, [unknown(9)])  # an old unknown replayed later does not move it back
    assert state.status is Status.SUBMITTED


def test_same_state_whatever_the_order() -> None:
    a, _ = apply(blank(), [accepted(), unknown(), receipt(ReceiptStatus.UNDELIVERED)])
    b, _ = apply(blank(), [receipt(ReceiptStatus.UNDELIVERED)])
    b, _ = apply(b, [unknown()])
    b, _ = apply(b, [accepted()])
    assert (a.status, a.final_at, a.reason_code) == (b.status, b.final_at, b.reason_code) == (
        Status.UNDELIVERED, T0 + timedelta(seconds=3), "receipt_undelivered")


def test_webhook_tells_unknown_with_its_reason_then_the_receipt() -> None:
    before = blank()
    changes = [accepted(), unknown(), receipt(ReceiptStatus.DELIVERED)]
    after, transitions = apply(before, changes)
    notes = notifications({MID: before}, [after], {MID: changes}, transitions)
    assert [(n.status, n.previous_status) for n in notes] == [
        (Status.ACCEPTED, None), (Status.UNKNOWN, Status.ACCEPTED), (Status.DELIVERED, Status.UNKNOWN)]
    payload = build_payload(notes[1], 2)
    assert (payload["status"], payload["reason_code"]) == ("unknown", "submit_outcome_unknown")


def test_campaign_report_counts_unknown_apart_from_failed_and_pending() -> None:
    row = {"variant": None, "targeted": 10, "sent": 6, "delivered": 5, "undelivered": 0, "failed": 1, "expired": 0,
           "unknown": 3, "pending": 1, "segments": 6}
    campaign = {"campaign_id": uuid.uuid4(), "tenant_id": "acme", "name": "c", "state": "running", "phase": None,
                "published": 10, "winner": None, "winner_detail": None, "variants": [], "ab_test": None}
    report = build(campaign, [row], [], [], [], [], alpha=0.05)
    totals = report["totals"]
    assert (totals["unknown"], totals["failed"], totals["pending"]) == (3, 1, 1)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {}, "retry"),
        (503, {"retry-after": "5"}, "retry"),
        (503, {}, "unknown"),
        (500, {}, "unknown"),
        (502, {}, "unknown"),
        (504, {}, "unknown"),
        (408, {}, "unknown"),
        (400, {}, "refused"),
        (401, {}, "refused"),
        (422, {}, "refused"),
    ],
)
def test_http_answers_after_sending(status: int, headers: dict[str, str], expected: str) -> None:
    outcome = http_error_outcome(status, headers, "c", "m")
    if expected == "unknown":
        assert isinstance(outcome, Unknown)
    else:
        assert outcome == Refused("c", "m", expected == "retry")
