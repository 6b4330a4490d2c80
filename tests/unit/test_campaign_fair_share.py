"""Fair share of the campaign lanes: the launcher's per-tenant bound of messages in flight, the
marks of what left the lanes, and the dispatcher's weighted turns within a batch (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.dispatcher.domain.fair import interleave
from services.ingest.campaigns.pacing import InFlightBound
from shared.campaign_progress import gated_marks, newest_by_tenant


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
    t = [datetime(2026, 12, 5, 12, 0, s, tzinfo=UTC) for s in range(4)]
    batch = [("held", t[0], False), ("held", t[2], False),  # all suppressed or held: out of the lanes
             ("mixed", t[1], True), ("mixed", t[3], False),  # its t[1] is still queued at the dispatcher
             ("sent", t[3], True)]
    assert gated_marks(batch) == {"held": t[2]}
