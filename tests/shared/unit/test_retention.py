"""What expires when (shared/retention.py): tenants' own ages, cutoffs, day partitions, the
once-per-period rule, and the options that set a tenant's retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from shared import retention

NOW = datetime(2026, 12, 5, 16, 30, tzinfo=UTC)


def test_a_tenant_age_overrides_the_default_both_ways() -> None:
    limits = retention.cutoffs(NOW, 400, {"short": 30, "long": 2000})
    assert limits.default == NOW - timedelta(days=400)
    assert limits.for_tenant("short") == NOW - timedelta(days=30)
    assert limits.for_tenant("anyone") == NOW - timedelta(days=400)
    # 40 days old: gone for the tenant that keeps 30 days, kept for everyone else
    at = NOW - timedelta(days=40)
    assert retention.is_expired(at, "short", limits)
    assert not retention.is_expired(at, "anyone", limits)
    assert not retention.is_expired(NOW - timedelta(days=401), "long", limits)
    assert retention.is_expired(NOW - timedelta(days=401), "anyone", limits)
    # partitions hold every tenant's rows: they go only once past the longest age
    assert limits.oldest_kept == NOW - timedelta(days=2000)
    # rows of tenants keeping less than the partitions go row by row (the default's too, here)
    assert set(limits.shorter) == {"short"}
    assert limits.default > limits.oldest_kept
    assert retention.cutoffs(NOW, 400, {}).oldest_kept == NOW - timedelta(days=400)
    assert retention.cutoffs(NOW, 400, {"short": 30}).shorter == {"short": NOW - timedelta(days=30)}


def test_tenant_overrides_are_read_leniently_and_set_strictly() -> None:
    rows = [("a", {"messages": 30, "clicks": 90}), ("b", {"messages": True}), ("c", {"messages": 0}),
            ("d", None), ("e", {"messages": "30"}), ("f", {"inbound": 7})]
    assert retention.tenant_overrides(rows, "messages") == {"a": 30}
    assert retention.tenant_overrides(rows, "inbound") == {"f": 7}
    assert retention.parse_tenant_retention({"messages": 30, "inbound": 3650}) == {"messages": 30, "inbound": 3650}
    for bad in ({"message": 30}, {"messages": 0}, {"messages": 3651}, {"messages": 1.5}, {"messages": True}):
        with pytest.raises(ValueError):
            retention.parse_tenant_retention(bad)
    assert retention.parse_retention_option(["messages=90", "clicks=default"]) == {"messages": 90, "clicks": None}
    for bad in (["messages"], ["messages=ninety"], ["nothing=default"], ["messages=0"]):
        with pytest.raises(ValueError):
            retention.parse_retention_option(bad)


def test_day_partition_names_and_ranges() -> None:
    assert retention.partition_name("message_events", date(2026, 1, 9)) == "message_events_p20260109"
    assert retention.partition_day("message_events", "message_events_p20260109") == date(2026, 1, 9)
    assert retention.partition_day("message_events", "message_events_default") is None
    assert retention.partition_day("message_events", "message_events_p20261399") is None
    assert retention.partition_day("message_events", "clicks_p20260109") is None
    assert retention.day_start(date(2026, 1, 9)) == datetime(2026, 1, 9, tzinfo=UTC)


def test_partitions_are_created_ahead_from_today_in_utc() -> None:
    late_evening_elsewhere = datetime(2026, 12, 5, 23, 30, tzinfo=UTC)
    have = ["message_events_p20261205", "message_events_p20261207"]
    assert retention.partitions_to_create("message_events", late_evening_elsewhere, 3, have) == [
        date(2026, 12, 6), date(2026, 12, 8)]
    assert retention.partitions_to_create("message_events", NOW, 0, []) == [date(2026, 12, 5)]


def test_a_partition_goes_once_its_whole_day_is_past_the_oldest_kept() -> None:
    names = ["message_events_p20251101", "message_events_p20251102", "message_events_p20251103",
             "message_events_default", "message_events_p20261205"]
    # oldest kept: 2025-11-02 12:00. The 1st ends before it; the 2nd holds rows still kept.
    kept_from = datetime(2025, 11, 2, 12, tzinfo=UTC)
    assert retention.partitions_to_drop("message_events", names, kept_from) == ["message_events_p20251101"]
    # exactly at a day's end: that day goes
    assert retention.partitions_to_drop("message_events", names, datetime(2025, 11, 3, tzinfo=UTC)) == [
        "message_events_p20251101", "message_events_p20251102"]
    assert retention.partitions_to_drop("message_events", names, datetime(2025, 11, 1, tzinfo=UTC)) == []


def test_a_job_is_due_once_per_interval() -> None:
    hour = timedelta(hours=1)
    assert retention.due(None, NOW, hour)
    assert not retention.due(NOW - timedelta(minutes=59), NOW, hour)
    assert retention.due(NOW - hour, NOW, hour)
