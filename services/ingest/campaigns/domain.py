"""Campaigns, pure: the definition's checks, the state machine, variant assignment, and the
message each contact gets. No I/O here; the repository and the launcher do that.

Assignment is deterministic: a contact's bucket is a hash of (campaign id, contact id), so
a relaunch, a resume or a second launcher after a crash gives every contact the same variant
and the same message id, and the dispatcher's claim turns any re-publication into a no-op.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.ingest.audience.contacts_repo import AudienceMember
from services.ingest.audience.templates import Rendered, Template, render
from shared.contracts import MessageAccepted
from shared.statuses import MessageType

BUCKETS = 10_000  # split percentages have two decimals
MESSAGE_NAMESPACE = uuid.UUID("6f1c5d0e-8a47-4a59-9d47-2b1f3f0c9a11")

State = Literal["draft", "scheduled", "running", "testing", "paused", "completed", "cancelled", "failed"]
Action = Literal["launch", "pause", "resume", "cancel"]


class CampaignError(Exception):
    """A request the campaign's state or definition does not allow (HTTP 409/422)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or []


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    template_id: uuid.UUID
    percent: float


@dataclass(frozen=True, slots=True)
class AbTest:
    test_percent: float  # share of the audience that gets the variants; the rest waits for the winner
    metric: Literal["click_rate", "delivery_rate", "conversion_rate"]
    wait_s: int
    min_sample: int


def check_variants(variants: Sequence[Variant]) -> list[dict[str, str]]:
    """Field-level problems: names unique, percentages positive and summing to 100."""
    problems: list[dict[str, str]] = []
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        problems.append({"loc": "body.variants", "code": "duplicate_variant", "msg": "variant names must be unique"})
    for i, v in enumerate(variants):
        if not 0 < v.percent <= 100 or round(v.percent * 100) != v.percent * 100:
            problems.append({"loc": f"body.variants.{i}.percent", "code": "invalid_percent",
                             "msg": "a percentage is above 0, at most 100, with at most two decimals"})
    total = round(sum(v.percent for v in variants) * 100)
    if total != BUCKETS:
        problems.append({"loc": "body.variants", "code": "split_not_100",
                         "msg": f"variant percentages add up to {total / 100:g}, not 100"})
    return problems


# --- state machine ----------------------------------------------------------------------------

_FROM: dict[Action, frozenset[str]] = {
    "launch": frozenset({"draft"}),
    "pause": frozenset({"scheduled", "running", "testing", "completed"}),
    "resume": frozenset({"paused"}),
    "cancel": frozenset({"draft", "scheduled", "running", "testing", "paused", "completed"}),
}


def transition(state: str, action: Action, *, send_at: datetime | None, now: datetime, paused_from: str | None) -> str:
    """The state after ``action``, or :class:`CampaignError` (409) when it is not allowed."""
    if state not in _FROM[action]:
        raise CampaignError(409, "invalid_state", f"a {state} campaign cannot be {_PAST[action]}")
    if action == "launch":
        return "scheduled" if send_at is not None and send_at > now else "running"
    if action == "pause":
        return "paused"
    if action == "resume":
        return paused_from or "running"
    return "cancelled"


def next_attempt_at(failed_before: int, now: datetime, *, max_attempts: int, base_s: float, max_s: float) -> datetime | None:
    """When a campaign that just failed (``failed_before`` failed attempts in a row before this
    one) is tried again: exponential backoff from ``base_s``, at most ``max_s``; None once
    ``max_attempts`` attempts have failed (the campaign ends ``failed``)."""
    failed = failed_before + 1
    if failed >= max_attempts:
        return None
    return now + timedelta(seconds=min(max_s, base_s * 2 ** (failed - 1)))


_PAST = {"launch": "launched", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}


# --- assignment -------------------------------------------------------------------------------


def _buckets(campaign_id: uuid.UUID, contact_id: uuid.UUID) -> tuple[int, int]:
    """Two independent buckets in [0, 10000): one for the test share, one for the variant."""
    digest = hashlib.sha256(campaign_id.bytes + contact_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS, int.from_bytes(digest[8:16], "big") % BUCKETS


def pick_variant(variants: Sequence[Variant], bucket: int) -> Variant:
    edge = 0
    for v in variants:
        edge += round(v.percent * 100)
        if bucket < edge:
            return v
    return variants[-1]


def assign(
    campaign_id: uuid.UUID,
    contact_id: uuid.UUID,
    variants: Sequence[Variant],
    ab_test: AbTest | None,
    phase: Literal["test", "winner"],
    winner: str | None,
) -> Variant | None:
    """The variant this contact gets in this phase, or None when the contact belongs to the other phase.

    Without an A/B test there is one phase and every contact gets a variant by its split.
    With one, contacts in the test share get a variant by its split in the test phase; the
    others get the winner in the winner phase.
    """
    share, split = _buckets(campaign_id, contact_id)
    if ab_test is None:
        return pick_variant(variants, split) if phase == "test" else None
    in_test = share < round(ab_test.test_percent * 100)
    if phase == "test":
        return pick_variant(variants, split) if in_test else None
    if in_test:
        return None
    chosen = next((v for v in variants if v.name == winner), None)
    return chosen or pick_variant(variants, split)


def pinned_versions(raw: list[dict[str, Any]]) -> dict[uuid.UUID, int | None]:
    """The template version each of a campaign's variants renders (stored at its creation; a
    campaign created before templates had versions renders the current one: None)."""
    return {uuid.UUID(str(v["template_id"])): v.get("template_version") for v in raw}


def message_id_for(campaign_id: uuid.UUID, contact_id: uuid.UUID) -> uuid.UUID:
    """One message per contact per campaign, whatever happens to the launcher."""
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{campaign_id}:{contact_id}")


def build_message(
    *,
    campaign_id: uuid.UUID,
    member: AudienceMember,
    variant: Variant,
    template: Template,
    region: str,
    sender: str | None,
    now: datetime,
    smart_encoding: bool,
    metadata: Mapping[str, str] | None = None,
    rendered: Rendered | None = None,
    template_version: int | None = None,
) -> MessageAccepted:
    """The accepted message for one contact (rendered with the contact's fields and language)."""
    rendered = rendered or render(template, member.template_fields(), smart=smart_encoding)
    info = rendered.info
    return MessageAccepted.model_construct(
        message_id=message_id_for(campaign_id, member.contact_id),
        to=member.phone,
        country=region,
        body=info.text,
        sender=sender or rendered.sender,
        type=MessageType(template.purpose),
        encoding=info.encoding,
        segments=info.segments,
        idempotency_key=None,
        metadata=dict(metadata or {}),
        status_callback_url=None,
        source="campaign",
        accepted_at=now,
        expires_at=None,
        send_at=None,
        contact_id=member.contact_id,
        campaign_id=campaign_id,
        variant=variant.name,
        journey_id=None,
        template_id=variant.template_id if template_version is not None else None,
        template_version=template_version,
    )
