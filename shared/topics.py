"""Every Kafka topic Herald uses, its key, its contract and who reads and writes it.

docs/topics.md is the readable catalogue of this table; a test keeps the two in step. The
``producers`` and ``consumers`` of a topic name Herald's services first (``"ingest (replies
lane)"``), then any outside party (``"upstream systems"``); tests/repo/test_topic_wiring.py reads
the services' code (every ``Outgoing(topic, ...)`` a service can reach, every consumer lane and
``run_service`` topic list) and fails when a service publishes to or consumes a topic this table
does not list for it, or is listed for one it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from pydantic import BaseModel

from shared.contracts import (
    CampaignWinnerEvent,
    ContactEventAcceptedEvent,
    ContactEventRequestEvent,
    DeliveryReceiptEvent,
    Envelope,
    ErasureRequestedEvent,
    InboundMessageEvent,
    JourneySendEvent,
    LinkClickedEvent,
    MessageAccepted,
    MessageAcceptedEvent,
    MessageCommandEvent,
    MessageOutboundEvent,
    MessageStatusEvent,
    RejectedEventEnvelope,
    ReplyForwardedEvent,
    SubjectAccessPartEvent,
    SubjectAccessRequestedEvent,
    TriggerEvent,
)
from shared.statuses import MessageType

# Herald's services, as the producers and consumers below name them (the first word).
SERVICES = ("ingest", "scheduler", "dispatcher", "reports")


@dataclass(frozen=True)
class Topic:
    suffix: str
    model: type[Envelope]
    key: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    description: str
    config: dict[str, str] = field(default_factory=dict)
    bulk: bool = False  # campaign traffic: published through a producer of its own (shared/kafka.py)

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.suffix}"

    def producing_services(self) -> frozenset[str]:
        return _services(self.producers)

    def consuming_services(self) -> frozenset[str]:
        return _services(self.consumers)


def _services(parties: tuple[str, ...]) -> frozenset[str]:
    """The Herald services among ``parties`` (``"reports (replies lane)"`` is reports)."""
    return frozenset(word for word in (party.split(" ", 1)[0] for party in parties) if word in SERVICES)


# Topics whose events carry numbers or message texts keep them a short time (docs/data-map.md):
# a record is deleted with its segment, at most retention + segment.ms (4 days) after it was
# written, so an erased number leaves Kafka within that time. Applied when `herald migrate`
# creates a topic; an existing topic needs `kafka-configs --alter` (docs/data-map.md).
PERSONAL_DATA_RETENTION = {"retention.ms": str(3 * 24 * 3600 * 1000), "segment.ms": str(24 * 3600 * 1000)}

TRIGGERS = Topic(
    "triggers.v1",
    TriggerEvent,
    key="tenant + recipient (any key is accepted)",
    producers=("upstream systems",),
    consumers=("ingest",),
    description="Message requests published by upstream systems; same payload as POST /v1/messages.",
    config=dict(PERSONAL_DATA_RETENTION),
)
JOURNEY_SENDS = Topic(
    "journeys.sends.v1",
    JourneySendEvent,
    key="recipient E.164 number",
    producers=("scheduler (journey steps)",),
    consumers=("ingest (journey-sends lane)",),
    description="A journey's send step, rendered for the contact, with the message id the journey chose. ingest "
    "accepts it like an API or trigger message (sender registry, sender pools and sticky senders, geo permissions, "
    "short links, the sender's throughput) and publishes it to messages.accepted with source journey, once per "
    "message id; a refused send goes to rejected.v1 and gets a failed status with the reason. See docs/journeys.md.",
    config=dict(PERSONAL_DATA_RETENTION),
)
ACCEPTED = Topic(
    "messages.accepted.v1",
    MessageAcceptedEvent,
    key="recipient E.164 number",
    producers=("ingest",
               "dispatcher (back to the scheduler: its campaign held or tenant disabled after the release)"),
    consumers=("scheduler (priority lane)", "reports"),
    description="Validated transactional messages with their id, encoding and segments. A lane of its own "
    "from ingest on, so a code never queues behind a campaign in any stage.",
    config=dict(PERSONAL_DATA_RETENTION),
)
ACCEPTED_BULK = Topic(
    "messages.accepted.bulk.v1",
    MessageAcceptedEvent,
    key="recipient E.164 number",
    producers=("ingest",
               "dispatcher (back to the scheduler: its campaign held or tenant disabled after the release)"),
    consumers=("scheduler (bulk lane)", "reports"),
    description="Validated marketing messages (campaigns), same contract as messages.accepted.v1; also transactional "
    "messages of a tenant past its share of the transactional lanes (payload bulk_lane: true).",
    bulk=True,
    config=dict(PERSONAL_DATA_RETENTION),
)
OUTBOUND = Topic(
    "messages.outbound.priority.v1",
    MessageOutboundEvent,
    key="recipient E.164 number",
    producers=("scheduler",),
    consumers=("dispatcher (priority lane)",),
    description="Transactional messages (codes, receipts, alerts) released for sending now. The dispatcher "
    "serves this lane first, so an OTP never waits behind a campaign.",
    config=dict(PERSONAL_DATA_RETENTION),
)
OUTBOUND_BULK = Topic(
    "messages.outbound.bulk.v1",
    MessageOutboundEvent,
    key="recipient E.164 number",
    producers=("scheduler",),
    consumers=("dispatcher (bulk lane)",),
    description="Marketing messages released for sending now (and transactional ones with bulk_lane: true); they "
    "use the gateway capacity the priority lane leaves.",
    bulk=True,
    config=dict(PERSONAL_DATA_RETENTION),
)
STATUS = Topic(
    "messages.status.v1",
    MessageStatusEvent,
    key="message id",
    producers=("scheduler", "dispatcher", "ingest (journey-sends lane: a refused journey send; campaign launcher: a refused campaign contact)"),
    consumers=("reports", "ingest (links lane: a submitted marketing message's short links start answering; "
                          "campaign_page_at moves the tenant's mark for the campaign launcher's pacing)"),
    description="Status changes: scheduled and suppressed (scheduler); submitted, unknown, failed and expired "
    "(dispatcher); failed for a journey send ingest refused (ingest). Receipts (delivered, undelivered) travel on receipts.v1.",
)
RECEIPTS = Topic(
    "receipts.v1",
    DeliveryReceiptEvent,
    key="gateway message id",
    producers=("ingest (HTTP provider callbacks)", "dispatcher (SMPP deliver_sm)"),
    consumers=("reports",),
    description="Delivery receipts from gateways, normalised.",
)
INBOUND = Topic(
    "inbound.v1",
    InboundMessageEvent,
    key="sender number",
    producers=("dispatcher (SMPP deliver_sm)", "ingest (HTTP provider webhooks)"),
    consumers=("ingest (replies lane: STOP/START/HELP, forwarding)",),
    description="Messages handsets sent to our numbers (MO), normalised.",
    config=dict(PERSONAL_DATA_RETENTION),
)
REPLIES = Topic(
    "replies.v1",
    ReplyForwardedEvent,
    key="handset number",
    producers=("ingest (replies lane)",),
    consumers=("reports (replies lane: reply webhooks)", "upstream systems (CRMs, chatbots)"),
    description="Ordinary replies (not STOP/START/HELP) from handsets, with the tenant found by the number they "
    "were sent to and the latest messages of the conversation. reports posts each one with a `webhook_url`, "
    "signed, to that URL. See docs/replies.md.",
    config=dict(PERSONAL_DATA_RETENTION),
)
CONTACT_EVENTS_IN = Topic(
    "contact-events.v1",
    ContactEventRequestEvent,
    key="tenant + phone or contact id (any key is accepted)",
    producers=("upstream systems",),
    consumers=("ingest",),
    description="Contact events from upstream systems (form sent, cart updated, order completed); same payload as "
    "POST /v1/events.",
    config=dict(PERSONAL_DATA_RETENTION),
)
CONTACT_EVENTS = Topic(
    "contact-events.accepted.v1",
    ContactEventAcceptedEvent,
    key="contact E.164 number",
    producers=("ingest",),
    consumers=("scheduler (journeys)", "reports (results lane: conversions)"),
    description="Validated contact events: journeys start, wait for and exit on them; one with a value is a "
    "conversion that reports attributes to the message that led to it.",
    config=dict(PERSONAL_DATA_RETENTION),
)
CLICKS = Topic(
    "clicks.v1",
    LinkClickedEvent,
    key="message id",
    producers=("ingest (GET /l/{code})",),
    consumers=("reports (results lane)",),
    description="Requests on tracked short links, published in batches after the redirect answered; bots and link "
    "previews are flagged with a reason. See docs/results.md.",
    config=dict(PERSONAL_DATA_RETENTION),
)
REJECTED = Topic(
    "rejected.v1",
    RejectedEventEnvelope,
    key="source topic",
    producers=("ingest", "scheduler", "dispatcher", "reports"),
    consumers=("operators (dead letters)",),
    description="Input that could not be accepted: the original payload and a machine-readable reason.",
    config={"retention.ms": str(14 * 24 * 3600 * 1000), "segment.ms": str(24 * 3600 * 1000)},
)
MESSAGE_COMMANDS = Topic(
    "messages.commands.v1",
    MessageCommandEvent,
    key="message id",
    producers=("ingest",),
    consumers=("scheduler (commands lane)",),
    description="A client cancels or reschedules a message the scheduler holds (DELETE or PATCH "
    "/v1/messages/{id}). The scheduler owns the held messages: it applies the command to its timer "
    "(a cancelled message becomes suppressed, reason cancelled_by_client; a rescheduled one is "
    "scheduled again with its new time). A message already released is left alone.",
)

ERASURES = Topic(
    "erasures.v1",
    ErasureRequestedEvent,
    key="tenant + the number's keyed hash (never the number)",
    producers=("ingest (POST /v1/erasures, DELETE /v1/contacts/{id})",),
    consumers=("scheduler (erasures lane)", "dispatcher (erasures lane)", "reports (erasures lane)"),
    description="Erase a number: ingest applies its own tables in the request, every other service that holds "
    "numbers or texts applies this event to its own tables in one transaction and writes its audit row "
    "(erasure_audit). Idempotent: an erasure applied again finds nothing and keeps its first audit row. See "
    "docs/data-map.md.",
    config=dict(PERSONAL_DATA_RETENTION),
)

SUBJECT_ACCESS = Topic(
    "subject-access.v1",
    SubjectAccessRequestedEvent,
    key="tenant + export id (never the number)",
    producers=("ingest (POST /v1/subject-access)",),
    consumers=("ingest (subject-access lane)", "scheduler (subject-access lane)", "dispatcher (subject-access lane)",
               "reports (subject-access lane)"),
    description="Export what Herald holds about a number: every service that holds numbers or texts reads its own "
    "tables about the number (one snapshot) and publishes its rows to subject-access.parts.v1. A redelivered request "
    "gathers again; ingest keeps one complete gathering per service. See docs/data-map.md.",
    config=dict(PERSONAL_DATA_RETENTION),
)
SUBJECT_ACCESS_PARTS = Topic(
    "subject-access.parts.v1",
    SubjectAccessPartEvent,
    key="export id",
    producers=("ingest", "scheduler", "dispatcher", "reports"),
    consumers=("ingest (subject-access-parts lane)",),
    description="One service's rows about the number of an export, by table, in chunks of at most "
    "HERALD_SUBJECT_ACCESS_PART_BYTES of JSON (well under the broker's message size limit). ingest stores them in "
    "subject_access_parts (once per chunk) and assembles the document when every service's chunks are in.",
    config=dict(PERSONAL_DATA_RETENTION),
)

CAMPAIGN_WINNERS = Topic(
    "campaigns.winners.v1",
    CampaignWinnerEvent,
    key="campaign id",
    producers=("reports (A/B winner worker)",),
    consumers=("ingest (campaign-winners lane)",),
    description="The winner of a campaign's A/B test, picked by reports once decide_at passed. ingest owns "
    "campaigns: it stores the winner and starts the winner phase if the campaign is still testing (a redelivery, "
    "or a campaign paused or cancelled meanwhile, changes nothing). See docs/campaigns.md.",
)

ALL: tuple[Topic, ...] = (TRIGGERS, JOURNEY_SENDS, ACCEPTED, ACCEPTED_BULK, OUTBOUND, OUTBOUND_BULK, STATUS, RECEIPTS, INBOUND, REPLIES,
                        CONTACT_EVENTS_IN, CONTACT_EVENTS, CLICKS, REJECTED, MESSAGE_COMMANDS, ERASURES,
                        SUBJECT_ACCESS, SUBJECT_ACCESS_PARTS, CAMPAIGN_WINNERS)


def on_bulk_lane(message: MessageAccepted) -> bool:
    """Whether a message travels the campaign (bulk) lanes: marketing, or transactional from a
    tenant that was past its share of the transactional lanes when it was accepted."""
    return message.type is MessageType.MARKETING or message.bulk_lane


def accepted_topic(message: MessageAccepted) -> Topic:
    return ACCEPTED_BULK if on_bulk_lane(message) else ACCEPTED


def outbound_topic(message: MessageAccepted) -> Topic:
    return OUTBOUND_BULK if on_bulk_lane(message) else OUTBOUND


def _type_name(annotation: object) -> str:
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def render_catalogue(default_prefix: str = "herald.", partitions: int = 6) -> str:
    """docs/topics.md, generated from this table (a test keeps the file in step)."""
    lines = [
        "# Topic catalogue",
        "",
        "Generated from `shared/topics.py` by `python -m shared.topics > docs/topics.md`; a test fails when they differ.",
        "The producers and consumers are checked against the services' code (`tests/repo/test_topic_wiring.py`): a",
        "service that publishes to or consumes a topic not listed for it here, or is listed for one its code does not",
        "touch, fails it.",
        "",
        f"Names carry the prefix `HERALD_TOPIC_PREFIX` (default `{default_prefix}`); `herald migrate` creates",
        f"missing topics with `HERALD_TOPIC_PARTITIONS` partitions (default {partitions}) and",
        "`HERALD_TOPIC_REPLICATION` replicas. Every event travels in the same envelope:",
        "`event_id` (UUID), `type`, `version`, `occurred_at` (ISO 8601 with zone), `tenant`, `trace_id`, `payload`.",
        "A consumer rejects an event whose `type` or `version` it does not know (reason `unsupported_event`).",
        "",
        "**Signed input.** Upstream systems write to `triggers.v1` and `contact-events.v1`; so that one",
        "producer cannot speak for another tenant, each record carries the headers `herald-key` (a Kafka",
        "input key id of the tenant the envelope names: `herald admin kafka-key create TENANT`) and",
        "`herald-signature` (`v1=` and the hex HMAC-SHA256 of the record's value under the key's secret).",
        "ingest refuses anything else to `rejected.v1`: `unsigned_event`, `unknown_signing_key` (unknown or",
        "revoked), `bad_signature`, `tenant_mismatch` (`HERALD_KAFKA_INPUT_SIGNATURES=optional` accepts",
        "unsigned events, for installs whose every producer is trusted). With Kafka ACLs (Strimzi",
        "`KafkaUser`), give each upstream system write access to these two topics only, and Herald's",
        "services their own users (docs/kubernetes.md).",
        "",
        "**Evolving a contract.** Within a version a payload only gains fields, optional ones with a",
        "default, and never changes or drops one; a consumer ignores the fields it does not know yet",
        "(tolerant reader), so in a rolling deploy the producer may be upgraded before its consumers. The",
        "payloads upstream systems write (`triggers.v1`, `contact-events.v1`) are the exception: they refuse",
        "unknown fields, so a misspelt field is reported in `rejected.v1` instead of silently dropped. Any",
        "other change is a new version on a topic of its own (`….v2`), produced beside the old one until",
        "every consumer reads it.",
        "",
        "| topic | event type | key | producers | consumers |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in ALL:
        fields = t.model.model_fields
        event_type = fields["type"].default
        version = fields["version"].default
        lines.append(
            f"| `{t.name(default_prefix)}` | `{event_type}` v{version} | {t.key} | {', '.join(t.producers)} | {', '.join(t.consumers)} |"
        )
    for t in ALL:
        payload_model = cast("type[BaseModel]", t.model.model_fields["payload"].annotation)
        lines += ["", f"## `{t.name(default_prefix)}`", "", t.description, ""]
        if t.config:
            lines += ["Topic config: " + ", ".join(f"`{k}={v}`" for k, v in t.config.items()), ""]
        lines += [f"Payload `{payload_model.__name__}`:", "", "| field | type | required | description |", "| --- | --- | --- | --- |"]
        for name, info in payload_model.model_fields.items():
            annotation = _type_name(info.annotation)
            description = (info.description or "").replace("|", "/")
            lines.append(f"| `{name}` | {annotation} | {'yes' if info.is_required() else 'no'} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_catalogue(), end="")
