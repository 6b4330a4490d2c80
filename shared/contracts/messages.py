"""Payloads of the message lifecycle topics."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from shared.contracts.envelope import Envelope
from shared.statuses import MessageType, ReceiptStatus, Status

MAX_BODY_CHARS = 1600

Metadata = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], Annotated[str, StringConstraints(max_length=512)]],
    Field(max_length=32, description="Up to 32 string pairs, echoed in status callbacks and reports"),
]


TemplateValues = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)],
        Annotated[str, StringConstraints(max_length=200)] | int | float | bool,
    ],
    Field(max_length=50),
]


class _Input(BaseModel):
    """What upstream systems send (the trigger topic, the API): unknown fields are refused, so a
    misspelt field is reported instead of silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Frozen(BaseModel):
    """What Herald's services publish to each other: a field this process does not know yet is
    ignored (tolerant reader), so a producer deployed before its consumers may add optional
    fields within a version (docs/topics.md, "Evolving a contract")."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class MessageRequest(_Input):
    """What an upstream system asks Herald to send (HTTP body and trigger-topic payload)."""

    to: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        description="Recipient in E.164, e.g. +34600123456", examples=["+34600123456"]
    )
    body: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY_CHARS)] | None = Field(
        None, description="Text, 1 to 1,600 characters. Give `body` or `template_id`, not both"
    )
    template_id: uuid.UUID | None = Field(
        None,
        description="Send this template (`POST /v1/templates`) instead of a body: rendered in the recipient's language "
        "(the contact's, else the number's country's, else the template's default) with the contact's fields and "
        "`values`; `type` defaults to the template's purpose (docs/audience.md, \"Sending by template\")",
    )
    template_version: int | None = Field(
        None, ge=1, le=1_000_000, description="With `template_id`: render this version (default: the current one)"
    )
    values: TemplateValues | None = Field(
        None,
        description="With `template_id`: the per-send values its `{{values.<key>}}` placeholders read (up to 50; "
        "strings up to 200 characters, numbers, booleans)",
        examples=[{"code": "482913"}],
    )
    sender: Annotated[str, StringConstraints(pattern=r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$")] | None = Field(
        None, description="Alphanumeric sender id (up to 11 characters) or a number"
    )
    sender_pool: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        None, description="Send from one of this sender pool's senders instead of naming a `sender`: the recipient "
        "keeps the one it got before while it may send (docs/senders.md, \"Pools and sticky senders\")"
    )
    type: MessageType = Field(
        MessageType.TRANSACTIONAL,
        description="transactional (the default) or marketing; marketing obeys consent, quiet hours and caps, and gets "
        "an opt-out line in the recipient's language when its text has none (docs/audience.md)",
    )
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="The same key always returns the same message id and never sends twice"
    )
    metadata: Metadata = Field(default_factory=dict)
    status_callback_url: AnyHttpUrl | None = Field(None, description="Where status changes are posted")
    validity_s: int | None = Field(
        None, ge=1, le=36_000,
        description="Seconds the message stays worth sending (an OTP: 300); past it the message expires unsent",
    )
    send_at: AwareDatetime | None = Field(
        None, description="Send at this time (with zone), up to 35 days ahead; quiet hours still apply then"
    )
    secret: bool = Field(
        False,
        description="The text is a secret (a one-time code, a password): it is never logged, never in status webhooks, "
        "reports or exports, and is redacted from Herald's database as soon as the message is final (docs/operations.md, "
        "Retention)",
    )
    track_links: bool | None = Field(
        None, description="Marketing only: false leaves links as written (default: links become tracked short links)"
    )

    @model_validator(mode="after")
    def _body_or_template(self) -> MessageRequest:
        if (self.body is None) == (self.template_id is None):
            raise PydanticCustomError("template_or_body", "give a body or a template_id, not both")
        if self.template_id is None and (self.values is not None or self.template_version is not None):
            raise PydanticCustomError("template_or_body", "values and template_version go with a template_id")
        if self.sender is not None and self.sender_pool is not None:
            raise PydanticCustomError("sender_or_pool", "give a sender or a sender_pool, not both")
        return self


class SenderThrottle(_Frozen):
    """A sender's contracted throughput, held by the dispatcher across its instances (docs/senders.md)."""

    kind: str = Field(description="The sender's kind (long_code, toll_free, short_code, alphanumeric)")
    rate_per_s: float = Field(gt=0, description="Segments per second")
    burst: float | None = Field(None, ge=1, description="Bucket size (default: one second's worth)")


class MessageAccepted(_Frozen):
    message_id: uuid.UUID
    to: str = Field(description="E.164")
    country: str = Field(description="ISO 3166-1 alpha-2 region of the number")
    body: str
    sender: str | None = None
    type: MessageType
    encoding: Literal["GSM-7", "UCS-2"]
    segments: int = Field(ge=1)
    idempotency_key: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    status_callback_url: str | None = None
    source: Literal["api", "kafka", "campaign", "journey"] = Field(
        description="Where it came from: api (HTTP), kafka (the trigger topic), campaign (the launcher), journey (a "
        "journey's send step, accepted by ingest's journey-sends lane)"
    )
    accepted_at: AwareDatetime
    expires_at: AwareDatetime | None = Field(None, description="Not sent after this time (validity_s)")
    send_at: AwareDatetime | None = Field(None, description="Not sent before this time")
    contact_id: uuid.UUID | None = Field(None, description="The audience contact it was rendered for (campaigns, journeys)")
    campaign_id: uuid.UUID | None = Field(None, description="The campaign that sent it")
    variant: str | None = Field(None, max_length=32, description="The campaign variant (A/B) it belongs to")
    journey_id: uuid.UUID | None = Field(None, description="The journey that sent it")
    template_id: uuid.UUID | None = Field(
        None, description="The template it was rendered from (sent by template). Left out of the event when none",
        exclude_if=lambda v: v is None,
    )
    template_version: int | None = Field(
        None, description="That template's version. Left out of the event when none", exclude_if=lambda v: v is None
    )
    carrier_ids: dict[str, str] = Field(
        default_factory=dict,
        description="Carrier registration ids its sender needs for the destination (docs/senders.md): ten_dlc_brand_id, "
        "ten_dlc_campaign_id, toll_free_verification_id, dlt_entity_id, and dlt_template_id when sent by a template "
        "that has one; SMPP gateways send those their "
        "registration_tlvs name. Left out of the event when empty",
        exclude_if=lambda v: not v,
    )
    sender_pool: str | None = Field(
        None, description="The sender pool its sender was chosen from. Left out of the event when none",
        exclude_if=lambda v: v is None,
    )
    sender_choice: dict[str, str] = Field(
        default_factory=dict,
        description="How its pool's sender was chosen, for the timeline: sender_pool, sender, sender_choice (sticky, "
        "assigned, fallback), and for a fallback fallback_from, fallback_reason, fallback_message. Left out of the "
        "event when empty",
        exclude_if=lambda v: not v,
    )
    sender_throttle: SenderThrottle | None = Field(
        None, description="Its sender's contracted throughput, which the dispatcher holds it to. Left out of the "
        "event when none", exclude_if=lambda v: v is None,
    )
    sandbox: bool = Field(
        False,
        description="Sent with a test key: the pipeline runs as for any message, but the dispatcher hands it to its "
        "sandbox gateway, which never reaches a carrier and simulates the outcome. Left out of the event when false",
        exclude_if=lambda v: not v,
    )
    secret: bool = Field(
        False,
        description="The text is a secret (MessageRequest.secret): redacted as soon as the message is final. Left out "
        "of the event when false",
        exclude_if=lambda v: not v,
    )
    bulk_lane: bool = Field(
        False,
        description="Sent on the campaign lanes although transactional: its tenant was past its share of the "
        "transactional lanes when it was accepted (docs/operations.md, fair share). Left out of the event when false",
        exclude_if=lambda v: not v,
    )


class MessageOutbound(MessageAccepted):
    """A message the scheduler released for sending now."""

    released_at: AwareDatetime


class MessageStatusChanged(_Frozen):
    message_id: uuid.UUID
    status: Status
    reason_code: str | None = Field(None, description="Machine-readable reason (suppressed, failed, rejected)")
    reason: str | None = None
    gateway: str | None = None
    gateway_message_id: str | None = None
    gateway_part_ids: list[str] = Field(
        default_factory=list, description="Ids of every part of a concatenated message (SMPP), first = gateway_message_id"
    )
    attempts: int = 0
    segments: int | None = None
    type: MessageType | None = None
    detail: dict[str, str] = Field(
        default_factory=dict, description="Decision details for the timeline (route, failover, rule)"
    )
    campaign_page_at: AwareDatetime | None = Field(
        None,
        description="A campaign message's accepted_at (the launcher's page it was published in), on a status that "
        "takes it out of the campaign lanes: ingest moves its tenant's mark of what left the lanes up to the newest "
        "(docs/operations.md, fair share of the campaign lanes). The scheduler leaves it out for a tenant with campaign "
        "messages of the same batch passed on to the dispatcher. Left out of the event when none",
        exclude_if=lambda v: v is None,
    )
    campaign_id: uuid.UUID | None = Field(
        None, description="On the failed status of a campaign contact the launcher refused (never accepted): its "
        "campaign, so the campaign's report counts it. Left out of the event when none",
        exclude_if=lambda v: v is None,
    )
    variant: str | None = Field(None, description="With campaign_id: the contact's variant", exclude_if=lambda v: v is None)
    contact_id: uuid.UUID | None = Field(None, description="With campaign_id: the contact", exclude_if=lambda v: v is None)


class DeliveryReceipt(_Frozen):
    gateway: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    gateway_message_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    status: ReceiptStatus
    error_code: str | None = Field(None, max_length=32)
    raw_status: str | None = Field(None, max_length=64)
    done_at: AwareDatetime | None = None
    client_ref: str | None = Field(None, max_length=128, description="Herald's message id when echoed back")
    fingerprint: str | None = Field(
        None, max_length=64,
        description="Hash of the receipt as the gateway sent it (SMPP: addresses and text): part of the event id, so "
        "receipts for two submissions of a reused gateway id differ while a resent receipt does not",
    )


class InboundMessage(_Frozen):
    """A message a handset sent to one of our numbers (SMPP deliver_sm, HTTP provider webhook)."""

    gateway: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    gateway_message_id: str | None = Field(None, max_length=128)
    sender: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(description="The handset's number")
    recipient: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        description="Our number, short code or sender id it was sent to"
    )
    body: Annotated[str, StringConstraints(max_length=10_000)]
    received_at: AwareDatetime


class RejectedEvent(_Frozen):
    source: str = Field(description="Topic name or entry point the input came from")
    reason_code: str
    reason: str
    errors: list[dict[str, str]] = Field(default_factory=list, description="Field-level errors: loc, code, msg")
    original: str = Field(description="The original payload, UTF-8 text or base64")
    original_encoding: Literal["utf-8", "base64"] = "utf-8"
    key: str | None = None
    partition: int | None = None
    offset: int | None = None


class TriggerEvent(Envelope[MessageRequest]):
    type: Literal["message.requested"] = "message.requested"
    version: Literal[1] = 1


class MessageAcceptedEvent(Envelope[MessageAccepted]):
    type: Literal["message.accepted"] = "message.accepted"
    version: Literal[1] = 1


class MessageOutboundEvent(Envelope[MessageOutbound]):
    type: Literal["message.outbound"] = "message.outbound"
    version: Literal[1] = 1


class MessageCommand(_Frozen):
    """A client's change to a message the scheduler still holds (``DELETE``/``PATCH /v1/messages/{id}``)."""

    message_id: uuid.UUID
    action: Literal["cancel", "reschedule"] = Field(description="cancel: never send it; reschedule: hold it until send_at")
    send_at: AwareDatetime | None = Field(None, description="reschedule: the new time (quiet hours still apply then)")


class MessageCommandEvent(Envelope[MessageCommand]):
    type: Literal["message.command"] = "message.command"
    version: Literal[1] = 1


class MessageStatusEvent(Envelope[MessageStatusChanged]):
    type: Literal["message.status"] = "message.status"
    version: Literal[1] = 1


class DeliveryReceiptEvent(Envelope[DeliveryReceipt]):
    type: Literal["receipt.delivery"] = "receipt.delivery"
    version: Literal[1] = 1


class InboundMessageEvent(Envelope[InboundMessage]):
    type: Literal["message.inbound"] = "message.inbound"
    version: Literal[1] = 1


class RejectedEventEnvelope(Envelope[RejectedEvent]):
    type: Literal["event.rejected"] = "event.rejected"
    version: Literal[1] = 1
