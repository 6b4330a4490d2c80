"""Payloads of the contact-event topics: what happened to a contact upstream.

Upstream systems (shops, CRMs, backends) report events such as ``form.submitted``,
``cart.updated``, ``order.completed`` or ``event.registered``. ingest validates them
(HTTP ``POST /v1/events`` or the ``contact-events.v1`` topic) and publishes the accepted
form; journeys start, wait for and exit on them, and an event with a ``value`` is a
conversion that reports attributes to the message that led to it.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.envelope import Envelope

EventName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
PropertyValue = Annotated[str, StringConstraints(max_length=1024)] | int | float | bool | None
Properties = Annotated[
    dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], PropertyValue],
    Field(max_length=50, description="Up to 50 flat properties (string, number, bool, null); dates as ISO 8601 strings"),
]


class _Input(BaseModel):
    """What upstream systems send: unknown fields are refused (a misspelt field is reported)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Frozen(BaseModel):
    """What Herald publishes: unknown fields are ignored (docs/topics.md, "Evolving a contract")."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class ContactEventRequest(_Input):
    """An event as an upstream system sends it (HTTP body and ``contact-events.v1`` payload)."""

    name: EventName = Field(description="Lower-case event name, e.g. cart.updated", examples=["order.completed"])
    phone: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        None, description="The contact's number in E.164 (phone or contact_id is required)"
    )
    contact_id: uuid.UUID | None = Field(None, description="The contact's Herald id")
    event_key: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="Upstream's id for the event: the same key is the same event, counted once"
    )
    occurred_at: AwareDatetime | None = Field(None, description="When it happened (default: when received)")
    properties: Properties = Field(default_factory=dict)
    value: Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)] | None = Field(
        None, description="Monetary value: makes the event a conversion (an order's total)"
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = Field(
        None, description="ISO 4217 code of value"
    )


class ContactEventAccepted(_Frozen):
    """A validated event, with the number in E.164 and the contact resolved when known."""

    event_id: uuid.UUID = Field(description="Stable per (tenant, event_key) when a key was given")
    name: EventName
    phone: str = Field(description="E.164")
    contact_id: uuid.UUID | None = None
    event_key: str | None = None
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    properties: dict[str, PropertyValue] = Field(default_factory=dict)
    value: Decimal | None = None
    currency: str | None = None
    source: Literal["api", "kafka"]


class ContactEventRequestEvent(Envelope[ContactEventRequest]):
    type: Literal["contact.event.requested"] = "contact.event.requested"
    version: Literal[1] = 1


class ContactEventAcceptedEvent(Envelope[ContactEventAccepted]):
    type: Literal["contact.event"] = "contact.event"
    version: Literal[1] = 1
