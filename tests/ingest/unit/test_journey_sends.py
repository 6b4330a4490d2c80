"""The journey-sends contract and ingest's pure part of accepting a journey's send step."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.ingest.domain import Rejection
from services.ingest.journey_sends import as_request, idempotency_key, refused_status, stamp
from shared.contracts import JourneySendEvent, JourneySendRequested, MessageRequest, MessageStatusEvent
from shared.journeys.definition import JourneyDefinition
from shared.statuses import MessageType, Status
from shared.topics import ACCEPTED, JOURNEY_SENDS, STATUS

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def send(**fields) -> JourneySendRequested:
    base = {"message_id": uuid.uuid4(), "to": "+34600123456", "body": "Hi Ana", "type": "transactional",
            "metadata": {"journey_step": "1", "journey_run": str(uuid.uuid4())}, "contact_id": uuid.uuid4(),
            "journey_id": uuid.uuid4(), "requested_at": T0.isoformat()}
    return JourneySendRequested.model_validate({**base, **fields})


def test_the_contract_is_versioned_tolerant_and_names_a_sender_or_a_pool() -> None:
    s = send(sender_pool="otp")
    event = JourneySendEvent(event_id=s.message_id, tenant="acme", payload=s)
    assert (event.type, event.version) == ("journey.send_requested", 1)
    again = JourneySendEvent.model_validate_json(event.model_dump_json())
    assert again == event
    # a field a newer scheduler adds is ignored by an older ingest (docs/topics.md, "Evolving a contract")
    assert JourneySendRequested.model_validate({**s.model_dump(mode="json"), "later": 1}) == s
    with pytest.raises(ValidationError) as info:
        send(sender="Acme", sender_pool="otp")
    assert info.value.errors()[0]["type"] == "sender_or_pool"
    with pytest.raises(ValidationError):
        send(body="")
    with pytest.raises(ValidationError):
        JourneySendEvent(tenant="acme", payload=s, version=2)


def test_the_topic_goes_from_the_scheduler_to_ingest_s_own_lane() -> None:
    assert JOURNEY_SENDS.model is JourneySendEvent
    assert JOURNEY_SENDS.producing_services() == {"scheduler"} and JOURNEY_SENDS.consuming_services() == {"ingest"}
    assert "scheduler" not in ACCEPTED.producing_services(), "journeys no longer publish accepted messages themselves"
    assert "ingest" in STATUS.producing_services()


def test_a_send_becomes_the_request_the_api_would_validate() -> None:
    s = send(sender_pool="otp", type="marketing")
    request = as_request(s)
    assert isinstance(request, MessageRequest)
    assert (request.to, request.body, request.type, request.sender, request.sender_pool, request.metadata) == (
        s.to, s.body, MessageType.MARKETING, None, "otp", s.metadata)
    assert request.idempotency_key is None and request.template_id is None
    assert as_request(send(sender="Acme")).sender == "Acme"  # type: ignore[union-attr]
    refused = as_request(send(sender="not a sender id!"))
    assert isinstance(refused, Rejection) and refused.details[0]["loc"] == "sender"
    assert idempotency_key(s) == f"journey:{s.message_id}"


def test_the_accepted_message_carries_the_contact_journey_and_template() -> None:
    template = uuid.uuid4()
    s = send(template_id=str(template))
    assert stamp(s) == {"contact_id": s.contact_id, "journey_id": s.journey_id, "template_id": template}
    assert "template_id" not in stamp(send())


def test_a_refused_send_is_a_failed_status_with_its_reason_once() -> None:
    s = send()
    out = refused_status("acme", s, Rejection("sender_not_verified", "sender 'Acme' is suspended"), "trace-1")
    again = refused_status("acme", s, Rejection("sender_not_verified", "sender 'Acme' is suspended"), "trace-2")
    assert out.topic is STATUS and out.key == str(s.message_id)
    event = out.event
    assert isinstance(event, MessageStatusEvent)
    p = event.payload
    assert (p.message_id, p.status, p.reason_code, p.reason, p.type) == (
        s.message_id, Status.FAILED, "sender_not_verified", "sender 'Acme' is suspended", MessageType.TRANSACTIONAL)
    assert p.detail == {"source": "journey", "journey_id": str(s.journey_id), **s.metadata}
    assert event.event_id == again.event.event_id != s.message_id, "a redelivered refusal lands once in the timeline"


def test_a_send_step_may_name_a_sender_pool_not_both() -> None:
    base = {"name": "j", "trigger": {"event": "ping"}}
    ok = JourneyDefinition.model_validate(
        {**base, "steps": [{"type": "send", "purpose": "transactional", "body": "Hi", "sender_pool": "otp"}]})
    assert ok.steps[0].sender_pool == "otp"  # type: ignore[union-attr]
    for step, code in (({"sender_pool": "otp", "sender": "Acme"}, "sender_or_pool"),
                       ({"sender_pool": "no spaces"}, "string_pattern_mismatch")):
        with pytest.raises(ValidationError) as info:
            JourneyDefinition.model_validate(
                {**base, "steps": [{"type": "send", "purpose": "transactional", "body": "Hi", **step}]})
        assert code in {e["type"] for e in info.value.errors()}, info.value.errors()
