import uuid
from datetime import timedelta

from services.reports.domain import MessageState, apply, from_accepted, from_receipt, from_status
from shared.contracts import utcnow
from shared.statuses import ReceiptStatus, Status
from tests import factories

T0 = utcnow()
MID = uuid.uuid4()


def accepted():
    m = factories.accepted(message_id=MID, type="marketing", segments=2, accepted_at=T0)
    return from_accepted(uuid.uuid4(), "acme", m)


def submitted():
    s = factories.status(MID, Status.SUBMITTED, gateway="sim", gateway_message_id="g1", attempts=1)
    return from_status(uuid.uuid4(), "acme", T0 + timedelta(seconds=1), s)


def receipt(status: ReceiptStatus, seconds: float = 2):
    r = factories.receipt(status, "sim", "g1", error_code="000", done_at=T0 + timedelta(seconds=seconds))
    return from_receipt(uuid.uuid4(), MID, "acme", T0, r)


def blank() -> MessageState:
    return MessageState(message_id=MID, tenant_id="acme")


def test_in_order() -> None:
    state, moves = apply(blank(), [accepted(), submitted(), receipt(ReceiptStatus.DELIVERED)])
    assert state.status is Status.DELIVERED
    assert [t.new for t in moves] == [Status.ACCEPTED, Status.SUBMITTED, Status.DELIVERED]
    assert state.accepted_at == T0 and state.submitted_at == T0 + timedelta(seconds=1)
    assert state.final_at == T0 + timedelta(seconds=2)
    assert state.fields["to_e164"] == "+34600000001" and state.gateway_message_id == "g1"


def test_any_order_gives_the_same_state() -> None:
    a, _ = apply(blank(), [accepted(), submitted(), receipt(ReceiptStatus.DELIVERED)])
    s1, _ = apply(blank(), [receipt(ReceiptStatus.DELIVERED)])
    s2, _ = apply(s1, [submitted()])
    s3, _ = apply(s2, [accepted()])
    assert (s3.status, s3.accepted_at, s3.submitted_at, s3.final_at) == (a.status, a.accepted_at, a.submitted_at, a.final_at)


def test_first_final_wins() -> None:
    state, _ = apply(blank(), [accepted(), submitted(), receipt(ReceiptStatus.UNDELIVERED)])
    state, moves = apply(state, [receipt(ReceiptStatus.DELIVERED, 5)])
    assert state.status is Status.UNDELIVERED and moves == []
    assert state.reason_code == "receipt_undelivered"


def test_status_never_moves_back() -> None:
    state, _ = apply(blank(), [accepted(), submitted()])
    state, moves = apply(state, [accepted()])
    assert state.status is Status.SUBMITTED and moves == []


def test_enroute_receipt_is_timeline_only() -> None:
    state, _ = apply(blank(), [accepted(), submitted()])
    change = receipt(ReceiptStatus.ENROUTE)
    after, moves = apply(state, [change])
    assert after.status is Status.SUBMITTED and moves == []
    assert change.timeline_status == "receipt_enroute"
