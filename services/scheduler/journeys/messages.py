"""A send step becomes a send request: render for the contact, fill the contract.

Pure: the template and the contact are passed in. The scheduler renders because it holds what
the text reads (the run's trigger and latest event properties, the contact's fields as its
journeys read them); everything else a message needs is ingest's acceptance, the same as for the
API and the trigger topic (sender registry, sender pools, geo permissions, number types, short
links, the sender's throughput): the request goes to ``journeys.sends.v1`` and ingest publishes the
accepted message (services/ingest/journey_sends.py), which then goes through the scheduler's
normal gate (consent, suppression, frequency caps, quiet hours) like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from services.scheduler.journeys.engine import Run, Send
from shared.contracts import JourneySendEvent, JourneySendRequested
from shared.kafka import Outgoing
from shared.statuses import MessageType
from shared.templates import Template, TemplateError, render
from shared.topics import JOURNEY_SENDS


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


def build_send(
    send: Send, run: Run, contact: Mapping[str, Any] | None, template: Template | None, now: datetime, *, smart: bool = True,
) -> JourneySendRequested:
    """The send request of one send step; :class:`SendError` when it cannot be rendered (no
    template, text too long). Whether it may go (its number, its sender) is ingest's to decide."""
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
    except TemplateError as exc:
        raise SendError(exc.code, str(exc)) from None
    contact_id = (contact or {}).get("contact_id") or run.contact_id
    try:
        return JourneySendRequested(
            message_id=send.message_id,
            to=run.phone,
            body=rendered.info.text,
            type=MessageType(chosen.purpose),
            # a step naming a pool sends from the pool's sender for the contact, not its template's
            sender=None if step.sender_pool is not None else rendered.sender,
            sender_pool=step.sender_pool,
            metadata={"journey_step": send.step_id, "journey_run": str(run.run_id)},
            contact_id=contact_id,
            journey_id=run.journey_id,
            template_id=step.template_id,
            requested_at=now,
        )
    except ValidationError as exc:  # e.g. a text that rendered empty
        raise SendError("invalid_send", exc.errors(include_url=False)[0]["msg"]) from None


def send_event(tenant: str, request: JourneySendRequested, trace_id: str) -> Outgoing:
    """The send request's event: its id is the message id (stable when the step is published again)."""
    event = JourneySendEvent(
        event_id=request.message_id, occurred_at=request.requested_at, tenant=tenant, trace_id=trace_id, payload=request
    )
    return Outgoing(JOURNEY_SENDS, request.to, event)
