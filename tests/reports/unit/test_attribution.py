"""Conversion attribution: last clicked message in the window, else last delivered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.reports.attribution import Candidate, attribute

EVENT = datetime(2026, 5, 10, 12, tzinfo=UTC)
WEEK = timedelta(days=7)


def candidate(clicked_h: float | None = None, delivered_h: float | None = None, variant: str = "A") -> Candidate:
    ago = lambda h: EVENT - timedelta(hours=h) if h is not None else None  # noqa: E731
    return Candidate(uuid.uuid4(), uuid.uuid4(), variant, None, ago(clicked_h), ago(delivered_h))


def test_last_clicked_wins_over_a_later_delivery() -> None:
    older_clicked = candidate(clicked_h=30, delivered_h=48)
    newer_clicked = candidate(clicked_h=5, delivered_h=100)
    delivered_only = candidate(delivered_h=1)
    verdict = attribute(EVENT, WEEK, [older_clicked, delivered_only, newer_clicked])
    assert verdict.attribution == "click" and verdict.message == newer_clicked


def test_delivered_when_nothing_was_clicked() -> None:
    first, last = candidate(delivered_h=50), candidate(delivered_h=2)
    verdict = attribute(EVENT, WEEK, [last, first])
    assert verdict.attribution == "delivery" and verdict.message == last


def test_the_window_bounds_clicks_and_deliveries() -> None:
    outside = candidate(clicked_h=7 * 24 + 1, delivered_h=8 * 24)
    assert attribute(EVENT, WEEK, [outside]).attribution == "none"
    inside_delivery = candidate(clicked_h=200, delivered_h=100)
    verdict = attribute(EVENT, WEEK, [outside, inside_delivery])
    assert verdict.attribution == "delivery" and verdict.message == inside_delivery
    assert attribute(EVENT, timedelta(hours=1), [candidate(clicked_h=2)]).attribution == "none"


def test_events_after_the_conversion_do_not_count() -> None:
    later = candidate(clicked_h=-1, delivered_h=-2)
    assert attribute(EVENT, WEEK, [later]).attribution == "none"
    assert attribute(EVENT, WEEK, []).message is None
