"""Status webhooks, the pure parts: which changes are posted and in what order, the payload,
the signature, the backoff schedule, how answers are classified, and the per-message ordering rule."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.reports.domain import MessageState, apply, from_accepted, from_receipt, from_status
from services.reports.webhooks.rules import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    Gate,
    OutboxRow,
    Outcome,
    Result,
    backoff_s,
    build_headers,
    build_payload,
    claimable,
    classify,
    encode,
    event_id,
    finish_columns,
    head_flags,
    host_key,
    notifications,
    url_allowed,
)
from shared.contracts import MessageAccepted
from shared.signatures import HEADER, SignatureError, verify
from shared.statuses import ReceiptStatus, Status
from tests import factories

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://hooks.example.com/herald?token=abc"


def accepted(mid: uuid.UUID, url: str | None = URL) -> MessageAccepted:
    return factories.accepted(
        message_id=mid, to="+34600123456", body="hi", type="transactional", segments=2, accepted_at=T0,
        metadata={"order": "81"}, status_callback_url=url,
    )


def changes_for(mid: uuid.UUID, url: str | None = URL):
    acc = from_accepted(uuid.uuid4(), "acme", accepted(mid, url))
    sub = from_status(uuid.uuid4(), "acme", T0 + timedelta(seconds=1), factories.status(
        mid, Status.SUBMITTED, gateway="sim", gateway_message_id="g1", attempts=2))
    done = from_receipt(uuid.uuid4(), mid, "acme", T0 + timedelta(seconds=5), factories.receipt(
        ReceiptStatus.UNDELIVERED, "sim", "g1", error_code="0x0B"))
    return acc, sub, done


def run(before: MessageState, changes):
    after, transitions = apply(before, list(changes))
    return after, notifications({before.message_id: before}, [after], {before.message_id: list(changes)}, transitions)


def test_each_transition_becomes_a_notification_in_order_even_when_events_come_shuffled() -> None:
    mid = uuid.uuid4()
    acc, sub, done = changes_for(mid)
    _, notes = run(MessageState(mid, "acme"), [done, sub, acc])
    assert [(n.status, n.previous_status) for n in notes] == [
        (Status.ACCEPTED, None), (Status.SUBMITTED, Status.ACCEPTED), (Status.UNDELIVERED, Status.SUBMITTED)]
    assert [n.occurred_at for n in notes] == [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=5)]
    assert notes[1].attempts == 2 and notes[1].gateway == "sim"
    assert notes[2].reason_code == "receipt_undelivered" and notes[2].reason == "gateway error code 0x0B"
    assert all(n.url == URL and n.metadata == {"order": "81"} and n.segments == 2 for n in notes)


def test_no_callback_url_no_notification() -> None:
    mid = uuid.uuid4()
    _, notes = run(MessageState(mid, "acme"), changes_for(mid, url=None))
    assert notes == []


def test_a_repeated_event_posts_nothing_again() -> None:
    mid = uuid.uuid4()
    acc, sub, done = changes_for(mid)
    state, _ = run(MessageState(mid, "acme"), [acc, sub])
    _, notes = run(state, [sub, acc])  # redelivered by Kafka
    assert notes == []
    _, notes = run(state, [done])
    assert [(n.status, n.previous_status) for n in notes] == [(Status.UNDELIVERED, Status.SUBMITTED)]


def test_url_arriving_after_the_status_moved_catches_up_in_order() -> None:
    """The accepted event (which carries the URL) was recorded after submitted and the receipt."""
    mid = uuid.uuid4()
    acc, sub, done = changes_for(mid)
    state, notes = run(MessageState(mid, "acme"), [sub])
    assert notes == []  # no URL known yet
    state, notes = run(state, [done])
    assert notes == []
    _, notes = run(state, [acc])
    assert [(n.status, n.previous_status) for n in notes] == [
        (Status.ACCEPTED, None), (Status.SUBMITTED, Status.ACCEPTED), (Status.UNDELIVERED, Status.SUBMITTED)]
    assert notes[0].occurred_at == T0 and notes[2].reason_code == "receipt_undelivered"


def test_payload_and_event_id() -> None:
    mid = uuid.uuid4()
    _, notes = run(MessageState(mid, "acme"), changes_for(mid))
    payload = build_payload(notes[1], 2)
    assert payload == {
        "event_id": str(event_id(mid, Status.SUBMITTED)), "type": "message.status", "message_id": str(mid), "seq": 2,
        "status": "submitted", "previous_status": "accepted", "reason_code": None, "reason": None,
        "occurred_at": "2026-03-01T12:00:01+00:00", "gateway": "sim", "segments": 2, "metadata": {"order": "81"},
        "attempts": 2,
    }
    assert event_id(mid, Status.SUBMITTED) == event_id(mid, Status.SUBMITTED) != event_id(mid, Status.DELIVERED)
    # the body is stable: the same payload, read back from jsonb with keys reordered, gives the same bytes
    assert encode(payload) == encode(json.loads(json.dumps(dict(reversed(payload.items())))))


def test_signature_verifies_with_shared_signatures_and_fails_when_tampered() -> None:
    body = encode({"status": "delivered", "message_id": "x"})
    headers = build_headers(b"whsec_test", body, "ev-1", 3, now=1_764_000_000)
    assert headers[EVENT_ID_HEADER] == "ev-1" and headers[ATTEMPT_HEADER] == "3"
    verify(b"whsec_test", body, headers[HEADER], now=1_764_000_010)
    with pytest.raises(SignatureError) as e:
        verify(b"whsec_test", body.replace(b"delivered", b"failed"), headers[HEADER], now=1_764_000_010)
    assert e.value.code == "signature_invalid"
    with pytest.raises(SignatureError):
        verify(b"other", body, headers[HEADER], now=1_764_000_010)


def test_backoff_doubles_from_the_base_and_is_capped() -> None:
    schedule = [backoff_s(n, 5, 600) for n in range(1, 10)]
    assert schedule == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert backoff_s(1000, 5, 600) == 600  # no overflow
    assert backoff_s(3, 5, 600, jitter=0.1, rand=lambda: 1.0) == pytest.approx(22.0)
    assert all(20 <= backoff_s(3, 5, 600, jitter=0.1) <= 22 for _ in range(100))


@pytest.mark.parametrize(("code", "outcome"), [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED),
    (500, Outcome.RETRY), (503, Outcome.RETRY), (408, Outcome.RETRY), (429, Outcome.RETRY),
    (400, Outcome.DEAD), (401, Outcome.DEAD), (404, Outcome.DEAD), (410, Outcome.DEAD),
    (301, Outcome.DEAD), (307, Outcome.DEAD),
])
def test_classify(code: int, outcome: Outcome) -> None:
    assert classify(code) is outcome


def test_only_http_and_https_urls() -> None:
    assert url_allowed("https://a.example/x") and url_allowed("http://127.0.0.1:8080/hook")
    assert not any(url_allowed(u) for u in ("ftp://a.example/", "file:///etc/passwd", "gopher://x", "https://", "nonsense"))


def test_ordering_rule_one_head_per_message_and_in_flight_blocks_successors() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = [
        OutboxRow(a, 1, "delivered", 0), OutboxRow(a, 2, "dead", 0), OutboxRow(a, 3, "pending", 5),
        OutboxRow(a, 4, "pending", 0),  # due, but seq 3 of the same message is not done
        OutboxRow(b, 1, "pending", 50),  # in flight or waiting for its retry
        OutboxRow(b, 2, "pending", 0),
    ]
    assert claimable(rows, now=10) == [OutboxRow(a, 3, "pending", 5)]
    assert claimable(rows, now=4) == []
    assert claimable(rows, now=60) == [OutboxRow(a, 3, "pending", 5), OutboxRow(b, 1, "pending", 50)]


def test_head_flags_only_the_first_new_row_of_an_idle_key_is_its_head() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # a: nothing pending yet, two new rows; b: a row already pending (it stays the head); c: one new row
    assert head_flags([a, a, b, b, c], pending={b}) == [True, False, False, False, True]
    assert head_flags([], pending={a}) == []


def test_finish_columns_one_array_per_column_in_result_order() -> None:
    row = {"id": 7, "attempts": 2}
    results = [
        Result({"id": 5, "attempts": 1}, Outcome.DELIVERED, 200, None),
        Result(row, Outcome.RETRY, 503, "HTTP 503", delay_s=10.0),
        Result({"id": 9, "attempts": 8}, Outcome.DEAD, 500, "HTTP 500 after 8 attempts", reason="exhausted"),
        Result({"id": 11, "attempts": 1}, Outcome.DELIVERED, 204, "ignored"),  # delivered clears the error
        Result({"id": 12, "attempts": 3}, Outcome.DEFER, None, "host_cap", delay_s=1.0),  # not posted: attempt given back
    ]
    assert finish_columns(results) == [
        [5, 7, 9, 11, 12], [1, 2, 8, 1, 3], ["delivered", "pending", "dead", "delivered", "pending"],
        [200, 503, 500, 204, None], [None, "HTTP 503", "HTTP 500 after 8 attempts", None, "host_cap"],
        [0.0, 10.0, 0.0, 0.0, 1.0], [0, 0, 0, 0, 1],
    ]


def test_host_key_is_host_and_port() -> None:
    assert host_key("https://Hooks.Example.com./x") == "hooks.example.com:443"
    assert host_key("http://127.0.0.1:8080/a") == "127.0.0.1:8080" and host_key("http://h.example/") == "h.example:80"


def test_gate_caps_posts_in_flight_per_tenant_and_per_host() -> None:
    gate = Gate(tenant_cap=2, host_cap=3, failures=5, cooldown_s=10)
    assert gate.admit("a", "slow:443", 0) is None and gate.admit("a", "slow:443", 0) is None
    assert gate.admit("a", "other:443", 0) == ("tenant_cap", 0.0)  # tenant a has 2 in flight
    assert gate.admit("b", "slow:443", 0) is None
    assert gate.admit("c", "slow:443", 0) == ("host_cap", 0.0)  # slow:443 has 3 in flight
    assert gate.admit("c", "fast:443", 0) is None  # another tenant, another host: goes
    gate.done("a", "slow:443", False, 1)
    assert gate.admit("a", "other:443", 1) is None and gate.admit("c", "slow:443", 1) is None


def test_gate_circuit_opens_after_consecutive_failures_and_closes_after_a_success() -> None:
    gate = Gate(tenant_cap=100, host_cap=100, failures=3, cooldown_s=10)
    for _ in range(2):
        assert gate.admit("t", "h:443", 0) is None
        assert not gate.done("t", "h:443", True, 0)
    assert gate.admit("t", "h:443", 0) is None and not gate.done("t", "h:443", False, 0)  # a success resets
    for _ in range(3):
        assert gate.admit("t", "h:443", 1) is None
        opened = gate.done("t", "h:443", True, 1)
    assert opened and gate.open_circuits(1) == 1
    assert gate.admit("t", "h:443", 5) == ("circuit_open", 6.0)  # held, unposted, for the cooldown
    assert gate.admit("t", "other:443", 5) is None  # other hosts go on
    assert gate.admit("t", "h:443", 11) is None  # cooldown over: tried again
    assert gate.done("t", "h:443", True, 11)  # and failing again: open again at once
    assert gate.admit("t", "h:443", 12) == ("circuit_open", 9.0)
    assert gate.admit("t", "h:443", 21) is None and not gate.done("t", "h:443", False, 21)  # a success closes it
    assert gate.open_circuits(21) == 0 and gate.admit("t", "h:443", 21) is None
    assert not gate.done("t", "h:443", None, 21)  # not counted (refused before posting)
