"""Event contracts: one versioned envelope model per topic. See docs/topics.md."""

from shared.contracts.campaigns import CampaignWinnerDecided, CampaignWinnerEvent
from shared.contracts.clicks import LinkClicked, LinkClickedEvent
from shared.contracts.envelope import SYSTEM_TENANT, Envelope, derived_event_id, utcnow
from shared.contracts.erasure import ErasureRequested, ErasureRequestedEvent
from shared.contracts.events import (
    ContactEventAccepted,
    ContactEventAcceptedEvent,
    ContactEventRequest,
    ContactEventRequestEvent,
)
from shared.contracts.journeys import JourneySendEvent, JourneySendRequested
from shared.contracts.messages import (
    DeliveryReceipt,
    DeliveryReceiptEvent,
    InboundMessage,
    InboundMessageEvent,
    MessageAccepted,
    MessageAcceptedEvent,
    MessageCommand,
    MessageCommandEvent,
    MessageOutbound,
    MessageOutboundEvent,
    MessageRequest,
    MessageStatusChanged,
    MessageStatusEvent,
    RejectedEvent,
    RejectedEventEnvelope,
    TriggerEvent,
)
from shared.contracts.replies import ConversationEntry, ReplyForwarded, ReplyForwardedEvent
from shared.contracts.subject_access import (
    SubjectAccessPart,
    SubjectAccessPartEvent,
    SubjectAccessRequested,
    SubjectAccessRequestedEvent,
)

__all__ = [
    "CampaignWinnerDecided",
    "CampaignWinnerEvent",
    "ContactEventAccepted",
    "ContactEventAcceptedEvent",
    "ContactEventRequest",
    "ContactEventRequestEvent",
    "SYSTEM_TENANT",
    "DeliveryReceipt",
    "DeliveryReceiptEvent",
    "Envelope",
    "ErasureRequested",
    "ErasureRequestedEvent",
    "InboundMessage",
    "InboundMessageEvent",
    "JourneySendEvent",
    "JourneySendRequested",
    "LinkClicked",
    "LinkClickedEvent",
    "MessageAccepted",
    "MessageAcceptedEvent",
    "MessageCommand",
    "MessageCommandEvent",
    "MessageOutbound",
    "MessageOutboundEvent",
    "MessageRequest",
    "MessageStatusChanged",
    "MessageStatusEvent",
    "RejectedEvent",
    "RejectedEventEnvelope",
    "ConversationEntry",
    "ReplyForwarded",
    "ReplyForwardedEvent",
    "SubjectAccessPart",
    "SubjectAccessPartEvent",
    "SubjectAccessRequested",
    "SubjectAccessRequestedEvent",
    "TriggerEvent",
    "derived_event_id",
    "utcnow",
]
