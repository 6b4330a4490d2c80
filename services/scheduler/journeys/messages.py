"""A send step becomes an accepted message: render for the contact, measure, fill the contract.

Pure: the template and the contact are passed in. The message then goes through the
scheduler's normal gate (consent, suppression, frequency caps, quiet hours) like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from services.scheduler.journeys.engine import Run, Send
from shared.contracts import MessageAccepted, MessageAcceptedEvent
from shared.kafka import Outgoing
from shared.phones import SMS_CAPABLE, PhoneError, parse_e164
from shared.statuses import MessageType
from shared.templates import Template, TemplateError, render
from shared.topics import accepted_topic


class SendError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def render_fields(run: Run, contact: Mapping[str, Any] | None) -> dict[str, Any]:
    """What placeholders read: the contact's fields, ``trigger.<property>``, ``event.<property>``."""
    fields: dict[str, Any] = dict(contact or {})
    for prefix, source in (("trigger", run.trigger), ("event", run.last_event or run.trigger)):
        for key, value in ((source or {}).get("properties") or {}).items():
            fields[f"{prefix}.{key}"] = value
    return fields


def build_message(
    send: Send, run: Run, contact: Mapping[str, Any] | None, template: Template | None, now: datetime, *, smart: bool = True,
    allowed_types: Iterable[str] | None = SMS_CAPABLE,
) -> MessageAccepted:
    """The message of one send step; :class:`SendError` when it cannot go (no template, text too
    long, a number of a type not allowed, e.g. premium rate, as ingest refuses it for the API)."""
    step = send.step
    if step.template_id is not None:
        if template is None:
            raise SendError("template_not_found", f"template {step.template_id} does not exist (any more)")
        purpose = step.purpose or template.purpose
        chosen = Template(purpose, template.default_language, template.variants, step.sender or template.sender)
    else:
        assert step.body is not None and step.purpose is not None
        chosen = Template(step.purpose, "en", {"en": step.body}, step.sender)
    try:
        rendered = render(chosen, render_fields(run, contact), smart=smart)
        phone = parse_e164(run.phone, allowed_types=allowed_types)
    except TemplateError as exc:
        raise SendError(exc.code, str(exc)) from None
    except PhoneError as exc:
        raise SendError(exc.code, str(exc)) from None
    contact_id = (contact or {}).get("contact_id") or run.contact_id
    return MessageAccepted(
        message_id=send.message_id,
        to=phone.e164,
        country=phone.country,
        body=rendered.info.text,
        sender=rendered.sender,
        type=MessageType(chosen.purpose),
        encoding=rendered.info.encoding,
        segments=rendered.info.segments,
        metadata={"journey_step": send.step_id, "journey_run": str(run.run_id)},
        source="kafka",
        accepted_at=now,
        contact_id=contact_id,
        journey_id=run.journey_id,
    )


def accepted_event(tenant: str, message: MessageAccepted, trace_id: str) -> Outgoing:
    """As ingest publishes it: the message id is the event id, marketing on the bulk lane."""
    event = MessageAcceptedEvent(
        event_id=message.message_id, occurred_at=message.accepted_at, tenant=tenant, trace_id=trace_id, payload=message
    )
    lane = accepted_topic(message)
    return Outgoing(lane, message.to, event)
