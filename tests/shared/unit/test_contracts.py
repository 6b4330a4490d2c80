import json
import uuid

import pytest
from pydantic import ValidationError

from shared.contracts import (
    ContactEventRequest,
    MessageAccepted,
    MessageAcceptedEvent,
    MessageRequest,
    TriggerEvent,
    derived_event_id,
    utcnow,
)
from shared.topics import ALL


def test_every_topic_has_a_distinct_versioned_name() -> None:
    names = [t.suffix for t in ALL]
    assert len(set(names)) == len(names)
    assert all(n.endswith(".v1") for n in names)


def test_envelope_round_trip() -> None:
    message = MessageAccepted(
        message_id=uuid.uuid4(), to="+34600000001", country="ES", body="hi", type="marketing",
        encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(),
    )
    event = MessageAcceptedEvent(tenant="acme", payload=message)
    again = MessageAcceptedEvent.model_validate_json(event.model_dump_json())
    assert again == event
    assert again.type == "message.accepted" and again.version == 1


def test_wrong_version_is_refused() -> None:
    event = TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body="x"))
    raw = event.model_dump_json().replace('"version":1', '"version":2')
    with pytest.raises(ValidationError):
        TriggerEvent.model_validate_json(raw)


def test_request_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError) as info:
        MessageRequest.model_validate({"to": "+34600000001", "body": "x", "colour": "red"})
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_body_limits() -> None:
    with pytest.raises(ValidationError):
        MessageRequest(to="+34600000001", body="")
    with pytest.raises(ValidationError):
        MessageRequest(to="+34600000001", body="x" * 1601)
    assert MessageRequest(to="+34600000001", body="x" * 1600)


def test_derived_event_ids_are_stable() -> None:
    mid = uuid.uuid4()
    assert derived_event_id(mid, "accepted") == derived_event_id(mid, "accepted")
    assert derived_event_id(mid, "accepted") != derived_event_id(mid, "submitted")


def test_events_between_services_ignore_fields_a_newer_producer_added() -> None:
    """Rolling deploys: a producer upgraded first may add optional fields within a version; the
    consumers still running the old code read the event and ignore what they do not know."""
    message = MessageAccepted(
        message_id=uuid.uuid4(), to="+34600000001", country="ES", body="hi", type="marketing",
        encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(),
    )
    raw = json.loads(MessageAcceptedEvent(tenant="acme", payload=message).model_dump_json())
    raw["payload"]["added_in_a_later_release"] = {"x": 1}
    raw["added_to_the_envelope_later"] = True
    assert MessageAcceptedEvent.model_validate(raw).payload == message


def test_input_from_upstream_still_refuses_unknown_fields() -> None:
    raw = json.loads(TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body="x")).model_dump_json())
    raw["payload"]["bdoy"] = "typo"
    with pytest.raises(ValidationError) as info:
        TriggerEvent.model_validate(raw)
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError):
        ContactEventRequest.model_validate({"name": "order.completed", "phone": "+34600000001", "colour": "red"})
