"""A concatenated message is delivered when every part is, and fails as soon as one part does."""

from __future__ import annotations

import uuid
from datetime import timedelta

from services.reports.domain import MessageState, apply, fold, from_accepted, from_receipt, from_status
from shared.contracts import utcnow
from shared.statuses import ReceiptStatus, Status
from tests import factories

T0 = utcnow()
MID = uuid.uuid4()
PARTS = ["smpp-a", "smpp-b", "smpp-c"]


def accepted():
    m = factories.accepted(message_id=MID, body="x" * 400, type="marketing", segments=3, accepted_at=T0,
                           campaign_id=uuid.uuid4(), variant="B", contact_id=uuid.uuid4())
    return from_accepted(uuid.uuid4(), "acme", m)


def submitted(parts=PARTS):
    s = factories.status(MID, Status.SUBMITTED, gateway="smsc", gateway_message_id=parts[0], gateway_part_ids=parts,
                         attempts=1)
    return from_status(uuid.uuid4(), "acme", T0 + timedelta(seconds=1), s)


def receipt(part: str, status: ReceiptStatus, seconds: float = 2):
    r = factories.receipt(status, "smsc", part, done_at=T0 + timedelta(seconds=seconds))
    return from_receipt(uuid.uuid4(), MID, "acme", T0, r)


def blank() -> MessageState:
    return MessageState(message_id=MID, tenant_id="acme")


def test_delivered_only_when_every_part_is() -> None:
    state, moves = apply(blank(), [accepted(), submitted(), receipt("smpp-a", ReceiptStatus.DELIVERED)])
    assert state.status is Status.SUBMITTED and state.part_ids == tuple(PARTS)
    state, moves = apply(state, [receipt("smpp-c", ReceiptStatus.DELIVERED, 3)])
    assert state.status is Status.SUBMITTED and moves == []
    assert {p: v["status"] for p, v in state.part_status.items()} == {"smpp-a": "delivered", "smpp-c": "delivered"}
    state, moves = apply(state, [receipt("smpp-b", ReceiptStatus.DELIVERED, 4)])
    assert state.status is Status.DELIVERED and [t.new for t in moves] == [Status.DELIVERED]
    assert state.final_at == T0 + timedelta(seconds=4)


def test_one_failed_part_fails_the_message_at_once() -> None:
    state, _ = apply(blank(), [accepted(), submitted(), receipt("smpp-a", ReceiptStatus.DELIVERED)])
    state, moves = apply(state, [receipt("smpp-b", ReceiptStatus.UNDELIVERED, 3)])
    assert state.status is Status.UNDELIVERED and state.reason_code == "receipt_undelivered"
    state, moves = apply(state, [receipt("smpp-c", ReceiptStatus.DELIVERED, 4)])
    assert state.status is Status.UNDELIVERED and moves == []
    assert {p: v["status"] for p, v in state.part_status.items()} == {
        "smpp-a": "delivered", "smpp-b": "undelivered", "smpp-c": "delivered"}


def test_the_timeline_says_which_receipts_were_only_parts() -> None:
    changes = [accepted(), submitted(), *(receipt(p, ReceiptStatus.DELIVERED, 2 + i) for i, p in enumerate(PARTS))]
    state, _, shown = fold(blank(), changes)
    assert state.status is Status.DELIVERED
    assert [c.timeline_status for c in shown] == ["accepted", "submitted", "part_delivered", "part_delivered", "delivered"]
    again, _, shown = fold(state, [receipt("smpp-a", ReceiptStatus.DELIVERED, 9)])
    assert again.status is Status.DELIVERED and [c.timeline_status for c in shown] == ["part_delivered"]


def test_any_order_and_repeated_receipts_give_the_same_result() -> None:
    receipts = [receipt(p, ReceiptStatus.DELIVERED, 2 + i) for i, p in enumerate(PARTS)]
    a, _ = apply(blank(), [accepted(), submitted(), *receipts])
    b, _ = apply(blank(), [submitted()])
    b, _ = apply(b, [receipts[2], receipts[2]])
    b, _ = apply(b, [receipts[0]])
    b, _ = apply(b, [accepted(), receipts[1]])
    assert (a.status, a.final_at, a.part_status) == (b.status, b.final_at, b.part_status)
    assert b.fields["variant"] == "B" and b.fields["campaign_id"] is not None


def test_single_part_messages_and_unknown_ids_behave_as_before() -> None:
    state, _ = apply(blank(), [accepted(), submitted(["smpp-x"]), receipt("smpp-x", ReceiptStatus.DELIVERED)])
    assert state.status is Status.DELIVERED and state.part_ids == ()
    state, _ = apply(blank(), [accepted(), submitted(), receipt("other-id", ReceiptStatus.DELIVERED)])
    assert state.status is Status.DELIVERED  # a whole-message receipt (e.g. a gateway without part ids)
