"""Payload of the replies topic: an ordinary reply forwarded to upstream systems."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.contracts.envelope import Envelope


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)


class ConversationEntry(_Frozen):
    direction: Literal["inbound", "outbound"]
    at: AwareDatetime | None = Field(None, description="Received (inbound) or accepted (outbound)")
    body: str | None = Field(None, description="Inbound text; outbound bodies are not stored by Herald (null)")
    message_id: uuid.UUID | None = Field(None, description="Outbound: Herald's message id")
    inbound_event_id: uuid.UUID | None = Field(None, description="Inbound: the inbound event id")
    status: str | None = Field(None, description="Outbound: the message's current status")
    type: str | None = Field(None, description="Outbound: transactional or marketing")
    sender: str | None = Field(None, description="Outbound: sender id or number; inbound: our number")


class ReplyForwarded(_Frozen):
    inbound_event_id: uuid.UUID = Field(description="The inbound event this reply came in")
    gateway: str
    gateway_message_id: str | None = None
    phone: str = Field(description="The handset's number (E.164)")
    recipient: str = Field(description="Our number, short code or sender id it was sent to")
    scope: str | None = Field(None, description="The brand scope of that number, if registered with one")
    body: str
    received_at: AwareDatetime
    conversation: list[ConversationEntry] = Field(
        default_factory=list, description="The latest messages to and from this number for this tenant, newest first"
    )
    webhook_url: str | None = Field(
        None, description="The tenant's reply webhook URL when the reply was forwarded, if it has one: reports posts "
        "the reply there, signed (docs/replies.md)"
    )


class ReplyForwardedEvent(Envelope[ReplyForwarded]):
    type: Literal["reply.forwarded"] = "reply.forwarded"
    version: Literal[1] = 1
