"""The demo's numbers: ``unique`` gives as many different numbers as asked, even from the US
alone (10,000 numbers; the only country open for marketing between 23:30 and 03:00 UTC, when
1,280 numbers drawn at random held only 1,193 different ones and a fair-share test failed)."""

from __future__ import annotations

import pytest

from herald_tools.demo import demo_numbers
from shared.phones import parse_e164


def test_unique_numbers_from_one_small_country() -> None:
    numbers = demo_numbers(1230, seed=83, countries=["US"], unique=True)
    assert len(numbers) == len(set(numbers)) == 1230
    assert {parse_e164(n, allowed_types=None).country for n in numbers[:50]} == {"US"}
    assert numbers == demo_numbers(1230, seed=83, countries=["US"], unique=True)  # the same every run


def test_more_than_the_countries_have_is_refused() -> None:
    with pytest.raises(ValueError, match="different numbers"):
        demo_numbers(10_001, countries=["US"], unique=True)


def test_some_country_taking_foreign_senders_is_open_for_marketing_at_every_hour_of_the_week() -> None:
    """The e2e tests send marketing from a Spanish number or an alphanumeric sender where quiet
    hours let it go out now (tests/helpers.py, foreign_numbers_allowed): there must be such a
    country at every hour, or those tests fail at some hours (CI runs at any time)."""
    from datetime import UTC, datetime, timedelta

    from herald_tools.demo import marketing_countries
    from tests.helpers import foreign_numbers_allowed

    start = datetime(2026, 12, 7, tzinfo=UTC)  # a Monday: a week of quarter hours, in winter and summer
    for base in (start, start + timedelta(days=210)):
        for quarter in range(7 * 96):
            now = base + timedelta(minutes=15 * quarter)
            assert foreign_numbers_allowed(marketing_countries(True, now=now, margin=timedelta(minutes=30))), now
