"""Fair share of the campaign lanes: the launcher's per-tenant bound of messages in flight, the
marks of what left the lanes (carried by the statuses, kept by ingest), and the dispatcher's
weighted turns within a batch (pure logic)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from services.dispatcher.domain.fair import interleave
from services.dispatcher.handlers import Job, status_event
from services.dispatcher.repository import Finish
from services.ingest.campaigns.pacing import InFlightBound
from services.ingest.campaigns.progress import lane_marks, newest_by_tenant
from services.scheduler.domain import Decision, Verdict, marking_tenants
from services.scheduler.handlers import route
from shared.contracts import (
    MessageAccepted,
    MessageOutbound,
    MessageStatusEvent,
    ReplyForwarded,
    ReplyForwardedEvent,
)
from shared.statuses import Status
from tests import factories


def test_a_tenant_below_its_bound_has_room_and_one_at_it_has_none() -> None:
    bound = InFlightBound(1000, {"big": 5000, "free": 0})
    assert bound.has_room("a", 0) and bound.has_room("a", 999)
    assert not bound.has_room("a", 1000) and not bound.has_room("a", 25_000)
    assert bound.has_room("big", 4999) and not bound.has_room("big", 5000)
    assert bound.has_room("free", 10**9), "0: no bound for that tenant"
    assert InFlightBound(0).has_room("anyone", 10**9), "0: no bound at all"


def test_tenants_take_turns_each_in_its_own_order() -> None:
    batch = [("a", i) for i in range(5)] + [("b", i) for i in range(2)] + [("c", 0)]
    out = interleave(batch, lambda m: m[0])
    assert out == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3), ("a", 4)]
    assert sorted(out) == sorted(batch), "nothing lost or repeated"


def test_a_late_tenant_in_a_batch_is_served_within_the_first_round() -> None:
    batch = [("a", i) for i in range(500)] + [("b", 0), ("b", 1)]
    out = interleave(batch, lambda m: m[0])
    assert out.index(("b", 0)) == 1 and out.index(("b", 1)) == 3


def test_weights_give_a_tenant_more_turns() -> None:
    batch = [("a", i) for i in range(6)] + [("b", i) for i in range(6)]
    out = interleave(batch, lambda m: m[0], {"a": 3, "b": 0})
    assert [t for t, _ in out] == list("aaabaaabbbbb")
    assert [i for t, i in out if t == "a"] == list(range(6))


def test_one_tenant_or_none_keeps_the_batch_as_it_is() -> None:
    batch = [("a", 3), ("a", 1), ("a", 2)]
    assert interleave(batch, lambda m: m[0]) == batch
    assert interleave([], lambda m: m[0]) == []


def test_the_newest_accepted_at_per_tenant_marks_what_left_the_lanes() -> None:
    t = [datetime(2026, 12, 5, 12, 0, s, tzinfo=UTC) for s in range(4)]
    assert newest_by_tenant([("a", t[1]), ("b", t[0]), ("a", t[3]), ("a", t[2])]) == {"a": t[3], "b": t[0]}
    assert newest_by_tenant([]) == {}


def test_the_scheduler_marks_only_tenants_none_of_whose_messages_went_on() -> None:
    batch = [("held", False), ("held", False),  # all suppressed or held: out of the lanes
             ("mixed", True), ("mixed", False),  # one of its messages is still queued at the dispatcher
             ("sent", True)]
    assert marking_tenants(batch) == {"held"}
    assert marking_tenants([]) == set()


T = [datetime(2026, 12, 5, 12, 0, s, tzinfo=UTC) for s in range(4)]


def _accepted(campaign: bool, at: datetime = T[1]) -> MessageAccepted:
    return factories.accepted(type="marketing", source="campaign" if campaign else "api", accepted_at=at,
                              campaign_id=uuid.uuid4() if campaign else None)


def _status(tenant: str, at: datetime | None, status: Status = Status.SUBMITTED) -> MessageStatusEvent:
    return factories.status_event(factories.status(status=status, campaign_page_at=at), tenant)


def test_a_batch_of_statuses_moves_each_tenant_to_its_newest_campaign_page() -> None:
    batch = [_status("aa", T[1]), _status("bb", T[0], Status.SUPPRESSED), _status("aa", T[3], Status.FAILED),
             _status("aa", T[2]), _status("cc", None),  # not a campaign message, or its tenant's batch went on
             ReplyForwardedEvent.model_construct(tenant="dd", payload=ReplyForwarded.model_construct())]
    assert lane_marks(batch) == {"aa": T[3], "bb": T[0]}
    assert lane_marks(batch + batch) == lane_marks(batch), "the same statuses again set the same marks"
    assert lane_marks([]) == {}


def test_the_dispatchers_statuses_of_campaign_messages_carry_their_page() -> None:
    for campaign in (True, False):
        message = MessageOutbound(**_accepted(campaign).model_dump(), released_at=T[2])
        for state in ("submitted", "failed", "expired", "unknown"):
            event = status_event(Job("acme", "trace", message), Finish(message.message_id, state, "sim", None, 1)).event
            assert event.payload.campaign_page_at == (T[1] if campaign else None)
            assert ("campaign_page_at" in json.loads(event.model_dump_json())["payload"]) is campaign, \
                "left out of other messages' statuses"


def test_the_schedulers_statuses_carry_the_page_only_when_its_tenant_is_marked() -> None:
    now = T[3]
    hold = Decision(Verdict.DEFER, "quiet_hours", "quiet hours", T[3])
    stop = Decision(Verdict.SUPPRESS, "no_consent", "no consent")
    for decision in (hold, stop):
        for campaign in (True, False):
            for mark in (True, False):
                [out] = route("acme", "trace", _accepted(campaign), decision, now, [], mark_lanes=mark)
                assert out.event.payload.campaign_page_at == (T[1] if campaign and mark else None)
    released = route("acme", "trace", _accepted(True), Decision(Verdict.RELEASE), now, [], mark_lanes=True)
    assert [type(o.event.payload) for o in released] == [MessageOutbound], "a release is no status: no mark"
