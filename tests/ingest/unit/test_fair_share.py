"""Each tenant's share of the transactional lanes (services/ingest/fair_share.py)."""

from __future__ import annotations

from services.ingest.fair_share import PriorityShare
from shared.contracts import MessageAccepted
from shared.statuses import MessageType
from shared.topics import ACCEPTED, ACCEPTED_BULK, OUTBOUND, OUTBOUND_BULK, accepted_topic, outbound_topic
from tests import factories


def test_a_burst_then_the_rate() -> None:
    share = PriorityShare(rate_per_s=10, burst=100)
    assert share.admit("a", 150, now=0.0) == 100
    assert share.admit("a", 50, now=0.0) == 0
    assert share.admit("a", 50, now=2.0) == 20  # two seconds at 10 a second
    assert share.admit("a", 5, now=2.0) == 0


def test_one_tenant_past_its_share_leaves_the_others_theirs() -> None:
    share = PriorityShare(rate_per_s=10, burst=100)
    assert share.admit("flood", 600_000, now=0.0) == 100
    assert share.admit("other", 3, now=0.0) == 3
    assert share.admit("other", 97, now=0.1) == 97


def test_per_tenant_rates_and_no_limit() -> None:
    share = PriorityShare(rate_per_s=10, burst=100, rates={"bank": 0, "shop": 1000})
    assert share.admit("bank", 1_000_000, now=0.0) == 1_000_000
    assert share.admit("shop", 5000, now=0.0) == 1000  # a rate above the burst is its own headroom
    assert PriorityShare(rate_per_s=0, burst=1).admit("x", 7, now=0.0) == 7


def test_many_idle_tenants_do_not_grow_without_bound() -> None:
    share = PriorityShare(rate_per_s=10, burst=100, max_tenants=10)
    for i in range(25):
        share.admit(f"t{i}", 1, now=0.0)
    assert len(share._buckets) <= 10


def _message(kind: MessageType, bulk_lane: bool = False) -> MessageAccepted:
    from datetime import UTC, datetime

    return factories.accepted(type=kind, accepted_at=datetime.now(UTC), bulk_lane=bulk_lane)


def test_the_lane_follows_the_type_and_the_flag() -> None:
    assert (accepted_topic(_message(MessageType.TRANSACTIONAL)), outbound_topic(_message(MessageType.TRANSACTIONAL))) == (ACCEPTED, OUTBOUND)
    assert (accepted_topic(_message(MessageType.MARKETING)), outbound_topic(_message(MessageType.MARKETING))) == (ACCEPTED_BULK, OUTBOUND_BULK)
    over = _message(MessageType.TRANSACTIONAL, bulk_lane=True)
    assert (accepted_topic(over), outbound_topic(over)) == (ACCEPTED_BULK, OUTBOUND_BULK)


def test_the_flag_is_left_out_of_events_unless_set() -> None:
    """Consumers that predate the flag keep reading every event that does not carry it."""
    assert "bulk_lane" not in _message(MessageType.TRANSACTIONAL).model_dump_json()
    assert '"bulk_lane":true' in _message(MessageType.TRANSACTIONAL, bulk_lane=True).model_dump_json()
