"""The campaign benchmark's contacts: distinct numbers in the countries open for marketing now."""

import pytest

from herald_tools.bench import contact_quotas


def test_a_small_number_space_takes_what_it_holds_and_the_others_the_rest() -> None:
    # In the evening only the US and Brazil take marketing; the US demo range has 10,000 numbers:
    # an equal share (500,000) would never be drawn (the benchmark looped for ever).
    quotas = contact_quotas(1_000_000, ["US", "BR"])
    assert quotas == {"US": 5_000, "BR": 995_000}


def test_equal_shares_where_every_country_has_room() -> None:
    assert contact_quotas(9, ["ES", "FR", "DE"]) == {"ES": 3, "FR": 3, "DE": 3}


def test_too_many_contacts_for_the_open_countries_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="room for 5,000"):
        contact_quotas(6_000, ["US"])
