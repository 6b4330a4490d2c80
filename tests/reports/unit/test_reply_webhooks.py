"""Reply webhooks, the pure parts: which replies are posted, their ordering key, the body, and
the URL check shared with `herald admin tenant reply-webhook`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.reports.webhooks.rules import (
    build_reply_payload,
    conversation_key,
    encode,
    event_id,
    reply_events,
)
from shared.contracts import ConversationEntry, ReplyForwarded, ReplyForwardedEvent
from shared.statuses import Status
from shared.tenant_admin import MAX_URL_LENGTH, webhook_url

AT = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


def reply(body: str = "Can I come on Friday?", *, url: str | None = "https://crm.example.com/replies",
          tenant: str = "acme", phone: str = "+34600123456", conversation: list[ConversationEntry] | None = None,
          ) -> ReplyForwardedEvent:
    return ReplyForwardedEvent(
        tenant=tenant,
        payload=ReplyForwarded(
            inbound_event_id=uuid.uuid4(), gateway="sim", phone=phone, recipient="+34911234567", scope="shoes",
            body=body, received_at=AT, conversation=conversation or [], webhook_url=url,
        ),
    )


def test_the_conversation_key_is_per_tenant_and_number_and_stable() -> None:
    key = conversation_key("acme", "+34600123456")
    assert key == conversation_key("acme", "+34600123456")
    assert key != conversation_key("acme", "+34600123457")
    assert key != conversation_key("other", "+34600123456")
    # never a status webhook's key: those are message ids, and event ids are derived otherwise
    assert key != event_id(key, Status.ACCEPTED)
    assert key.version == 5


def test_only_replies_of_tenants_with_a_webhook_are_posted_each_event_once_in_order() -> None:
    a, b, c = reply("one"), reply("two", url=None), reply("three")
    urls = {a.tenant: "https://crm.example.com/replies"}
    assert reply_events([a, b, c, a], urls) == [a, b, c]  # the event's own URL plays no part
    assert reply_events([a, b], {}) == []


def test_the_payload_carries_the_reply_and_its_conversation() -> None:
    sent = ConversationEntry(direction="outbound", at=AT, message_id=uuid.uuid4(), status="delivered",
                             type="marketing", sender="+34911234567")
    earlier = ConversationEntry(direction="inbound", at=AT, body="Hola", inbound_event_id=uuid.uuid4(),
                                sender="+34911234567")
    event = reply(conversation=[earlier, sent])
    payload = build_reply_payload(event, seq=4)
    assert payload == {
        "event_id": str(event.event_id),
        "type": "message.reply",
        "tenant": "acme",
        "seq": 4,
        "from": "+34600123456",
        "to": "+34911234567",
        "scope": "shoes",
        "body": "Can I come on Friday?",
        "received_at": "2026-03-01T12:00:05+00:00",
        "gateway": "sim",
        "inbound_event_id": str(event.payload.inbound_event_id),
        "conversation": [
            {"direction": "inbound", "at": "2026-03-01T12:00:05Z", "body": "Hola", "message_id": None,
             "inbound_event_id": str(earlier.inbound_event_id), "status": None, "type": None,
             "sender": "+34911234567"},
            {"direction": "outbound", "at": "2026-03-01T12:00:05Z", "body": None, "message_id": str(sent.message_id),
             "inbound_event_id": None, "status": "delivered", "type": "marketing", "sender": "+34911234567"},
        ],
    }
    # the URL is where it goes, not what is said; the body bytes are the same on every retry
    assert "webhook_url" not in payload and "https://crm.example.com/replies" not in encode(payload).decode()
    assert encode(build_reply_payload(event, 4)) == encode(payload)


def test_a_reply_without_url_still_validates_on_the_topic() -> None:
    """The field is optional: events published before it existed still parse."""
    old = reply(url=None).model_dump(mode="json")
    del old["payload"]["webhook_url"]
    assert ReplyForwardedEvent.model_validate(old).payload.webhook_url is None


@pytest.mark.parametrize("url", ["https://crm.example.com/herald/replies", "http://127.0.0.1:8080/hook?x=1"])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert webhook_url(f"  {url} ") == url


@pytest.mark.parametrize(("url", "stored"), [("http:crm.example.com", "http://crm.example.com/"),
                                             ("HTTPS://CRM.example.com", "https://crm.example.com/"),
                                             ("https://é.example.com/x", "https://xn--9ca.example.com/x")])
def test_urls_are_stored_normalised_as_status_callback_urls_are(url: str, stored: str) -> None:
    assert webhook_url(url) == stored


@pytest.mark.parametrize("url", ["ftp://crm.example.com/x", "crm.example.com/x", "https://", "",
                                 "https://crm.example.com/" + "a" * MAX_URL_LENGTH])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        webhook_url(url)
