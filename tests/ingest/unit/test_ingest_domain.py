import uuid

import pytest

from services.ingest.domain import Rejection, accept, parse_request, request_hash
from shared.contracts import MessageRequest, utcnow
from shared.phones import SMS_CAPABLE
from shared.providers.herald_http import parse_receipts
from shared.statuses import ReceiptStatus


def _accept(**fields: object):
    request = MessageRequest.model_validate({"to": "+34600000001", "body": "hello", **fields})
    return accept(request, message_id=uuid.uuid4(), now=utcnow(), source="api", allowed_types=SMS_CAPABLE, smart_encoding=True)


def test_accept_normalises_and_measures() -> None:
    m = _accept(to="+34 600 000 001", body="It’s “fine”", type="marketing")
    assert m.to == "+34600000001" and m.country == "ES"
    assert m.encoding == "GSM-7" and m.segments == 1
    assert m.body == "It's \"fine\""


@pytest.mark.parametrize(("to", "code"), [("+34123", "impossible_number"), ("34600000001", "not_e164"), ("+34803123456", "unsupported_number_type")])
def test_bad_numbers_are_rejected_on_field_to(to: str, code: str) -> None:
    with pytest.raises(Rejection) as info:
        _accept(to=to)
    assert info.value.code == code
    assert info.value.details[0]["loc"] == "to"


def test_parse_request_reports_field_errors() -> None:
    with pytest.raises(Rejection) as info:
        parse_request({"to": "+34600000001", "body": "", "type": "spam", "extra": 1})
    locs = {d["loc"]: d["code"] for d in info.value.details}
    assert locs == {"body": "string_too_short", "type": "enum", "extra": "extra_forbidden"}


def test_request_hash_ignores_the_key_but_not_the_content() -> None:
    a = MessageRequest(to="+34600000001", body="x", idempotency_key="k1")
    b = MessageRequest(to="+34600000001", body="x", idempotency_key="k2")
    c = MessageRequest(to="+34600000001", body="y", idempotency_key="k1")
    assert request_hash(a) == request_hash(b) != request_hash(c)


def test_parse_receipts_splits_good_and_bad() -> None:
    good, bad = parse_receipts(
        "sim",
        {"receipts": [
            {"id": "g1", "status": "delivered", "error_code": "000", "done_at": "2026-11-25T10:00:00Z"},
            {"id": "g2", "status": "exploded"},
            {"status": "failed"},
            "nonsense",
        ]},
    )
    assert [r.gateway_message_id for r in good] == ["g1"]
    assert good[0].status is ReceiptStatus.DELIVERED
    assert [(i, r.code) for i, r, _ in bad] == [(1, "unknown_status"), (2, "invalid_receipt"), (3, "malformed_receipt")]


def test_batch_message_ids_derive_from_the_batch_id_and_position() -> None:
    import uuid as _uuid

    from services.ingest.domain import batch_item_fingerprint, batch_message_ids

    batch = _uuid.uuid4()
    ids = batch_message_ids(batch, 3)
    assert ids == batch_message_ids(batch, 3) and len(set(ids)) == 3
    assert set(ids).isdisjoint(batch_message_ids(_uuid.uuid4(), 3))
    # Key order does not change an item's fingerprint; content does.
    assert batch_item_fingerprint({"to": "+34600000001", "body": "x"}) == batch_item_fingerprint({"body": "x", "to": "+34600000001"})
    assert batch_item_fingerprint({"body": "x"}) != batch_item_fingerprint({"body": "y"})
