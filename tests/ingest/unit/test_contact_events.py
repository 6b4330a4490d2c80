"""Contact events: the pure checks shared by POST /v1/events and the contact-events.v1 consumer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.domain import Rejection
from services.ingest.events.domain import KnownContact, accept_event, event_id_for, normalise_phone, parse_event
from shared.contracts import ContactEventRequest

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONTACT = KnownContact(uuid.uuid4(), "+34600123456")


def accept(request: ContactEventRequest, by_id=None, by_phone=None, tenant="acme"):
    return accept_event(request, tenant=tenant, phone=normalise_phone(request), by_id=by_id, by_phone=by_phone,
                        fallback_id=uuid.uuid4(), now=NOW, source="api")


def test_phone_is_normalised_and_the_contact_resolved_by_phone() -> None:
    event = accept(ContactEventRequest(name="form.submitted", phone=" +34 600 12 34 56"), by_phone=CONTACT)
    assert (event.phone, event.contact_id, event.occurred_at, event.received_at) == (CONTACT.phone, CONTACT.contact_id, NOW, NOW)
    unknown = accept(ContactEventRequest(name="form.submitted", phone="+34600999888"))
    assert (unknown.phone, unknown.contact_id) == ("+34600999888", None)


def test_contact_id_gives_the_number() -> None:
    event = accept(ContactEventRequest(name="order.completed", contact_id=CONTACT.contact_id), by_id=CONTACT)
    assert (event.phone, event.contact_id) == (CONTACT.phone, CONTACT.contact_id)


@pytest.mark.parametrize(("fields", "by_id", "code"), [
    ({}, None, "phone_or_contact_required"),
    ({"phone": "600123456"}, None, "not_e164"),
    ({"phone": "+34123"}, None, "impossible_number"),
    ({"contact_id": str(uuid.uuid4())}, None, "unknown_contact"),
    ({"contact_id": str(CONTACT.contact_id), "phone": "+34600999888"}, CONTACT, "contact_mismatch"),
    ({"phone": "+34600123456", "occurred_at": (NOW + timedelta(hours=1)).isoformat()}, None, "occurred_at_in_future"),
])
def test_reasons(fields: dict, by_id, code: str) -> None:
    with pytest.raises(Rejection) as info:
        accept(ContactEventRequest(name="x.y", **fields), by_id=by_id)
    assert info.value.code == code and info.value.details[0]["code"] == code


def test_event_key_gives_a_stable_id_per_tenant() -> None:
    keyed = ContactEventRequest(name="order.completed", phone=CONTACT.phone, event_key="order-81")
    a, b = event_id_for("acme", keyed, uuid.uuid4()), event_id_for("acme", keyed, uuid.uuid4())
    assert a == b != event_id_for("other", keyed, uuid.uuid4())
    fallback = uuid.uuid4()
    assert event_id_for("acme", ContactEventRequest(name="a.b", phone=CONTACT.phone), fallback) == fallback


def test_bad_batch_items_are_validation_failed_with_fields() -> None:
    with pytest.raises(Rejection) as info:
        parse_event({"name": "Not A Name", "phone": "+34600123456", "properties": {"nested": {"x": 1}}})
    assert info.value.code == "validation_failed"
    assert {d["loc"].split(".")[0] for d in info.value.details} == {"name", "properties"}
