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
