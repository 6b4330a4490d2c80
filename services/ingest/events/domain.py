"""Pure checks of a contact event: which number, which contact, which id, when."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from services.ingest.domain import Rejection
from shared.contracts import ContactEventAccepted, ContactEventRequest, derived_event_id
from shared.errors import field_errors
from shared.phones import PhoneError, parse_e164

MAX_CLOCK_SKEW = timedelta(minutes=5)  # an occurred_at further ahead is refused


@dataclass(frozen=True, slots=True)
class KnownContact:
    contact_id: uuid.UUID
    phone: str


def parse_event(item: Any) -> ContactEventRequest:
    try:
        return ContactEventRequest.model_validate(item)
    except ValidationError as exc:
        details = field_errors(exc.errors(include_url=False, include_input=False))
        raise Rejection("validation_failed", "event is not valid", details) from None


def normalise_phone(request: ContactEventRequest) -> str | None:
    """The request's number in E.164 (any valid number: an event is a fact, not a send)."""
    if request.phone is None:
        if request.contact_id is None:
            raise Rejection(
                "phone_or_contact_required", "an event needs the contact's phone or contact_id",
                [{"loc": "phone", "code": "phone_or_contact_required", "msg": "give phone or contact_id"}],
            )
        return None
    try:
        return parse_e164(request.phone, allowed_types=None).e164
    except PhoneError as exc:
        raise Rejection(exc.code, str(exc), [{"loc": "phone", "code": exc.code, "msg": str(exc)}]) from None


def event_id_for(tenant: str, request: ContactEventRequest, fallback: uuid.UUID) -> uuid.UUID:
    """Stable per (tenant, event_key): the same event sent again counts once downstream."""
    if request.event_key is not None:
        return derived_event_id("contact-event", tenant, request.event_key)
    return fallback


def accept_event(
    request: ContactEventRequest,
    *,
    tenant: str,
    phone: str | None,
    by_id: KnownContact | None,
    by_phone: KnownContact | None,
    fallback_id: uuid.UUID,
    now: datetime,
    source: Literal["api", "kafka"],
) -> ContactEventAccepted:
    """``phone`` is :func:`normalise_phone`'s answer; ``by_id`` / ``by_phone`` the contacts found."""
    if request.contact_id is not None:
        if by_id is None:
            raise Rejection(
                "unknown_contact", "no contact with this contact_id",
                [{"loc": "contact_id", "code": "unknown_contact", "msg": "not a contact of this tenant"}],
            )
        if phone is not None and phone != by_id.phone:
            raise Rejection(
                "contact_mismatch", "phone and contact_id name different contacts",
                [{"loc": "phone", "code": "contact_mismatch", "msg": "not the number of contact_id"}],
            )
        contact: KnownContact | None = by_id
    else:
        contact = by_phone
    occurred_at = request.occurred_at or now
    if occurred_at > now + MAX_CLOCK_SKEW:
        raise Rejection(
            "occurred_at_in_future", "occurred_at is in the future",
            [{"loc": "occurred_at", "code": "occurred_at_in_future", "msg": "more than 5 minutes ahead"}],
        )
    e164 = contact.phone if contact is not None else phone
    assert e164 is not None
    return ContactEventAccepted(
        event_id=event_id_for(tenant, request, fallback_id),
        name=request.name,
        phone=e164,
        contact_id=contact.contact_id if contact else None,
        event_key=request.event_key,
        occurred_at=occurred_at,
        received_at=now,
        properties=request.properties,
        value=request.value,
        currency=request.currency,
        source=source,
    )
