"""Geo permissions: the decision for one destination, and the country codes it takes."""

from __future__ import annotations

import pytest

from shared.geo import DEFAULT_HIGH_COST, GeoPolicy, GeoRules, country_code, parse_country_list, refusal

RULES = GeoRules("all", frozenset({"CU", "TM"}))


@pytest.mark.parametrize(
    ("policy", "rules", "destination", "allowed"),
    [
        # allowed_countries set: only those, whatever the country and the default
        (GeoPolicy.of("ES", ["ES", "FR"]), RULES, "FR", True),
        (GeoPolicy.of("ES", ["FR"]), RULES, "ES", False),
        (GeoPolicy.of(None, ["ES"]), GeoRules("none"), "ES", True),
        (GeoPolicy.of(None, []), RULES, "ES", False),
        # high-cost: only when named explicitly
        (GeoPolicy.of(None, ["CU"]), RULES, "CU", True),
        (GeoPolicy.of(None, ["ES"]), RULES, "CU", False),
        # only the country: that country alone; a high-cost own country still needs the list
        (GeoPolicy.of("ES", None), RULES, "ES", True),
        (GeoPolicy.of("ES", None), RULES, "FR", False),
        (GeoPolicy.of("CU", None), RULES, "CU", False),
        # neither: the service default, high-cost refused either way
        (GeoPolicy(), RULES, "FR", True),
        (GeoPolicy(), RULES, "TM", False),
        (GeoPolicy(), GeoRules("none", frozenset()), "FR", False),
        (GeoPolicy(), GeoRules("all", frozenset()), "TM", True),
    ],
)
def test_the_decision(policy: GeoPolicy, rules: GeoRules, destination: str, allowed: bool) -> None:
    reason = refusal(policy, destination, rules)
    assert (reason is None) is allowed, reason
    if reason is not None:
        assert destination in reason


def test_reasons_say_what_is_allowed() -> None:
    assert "ES, FR" in (refusal(GeoPolicy.of(None, ["FR", "ES"]), "DE", RULES) or "")
    assert "high-cost" in (refusal(GeoPolicy.of("ES", None), "CU", RULES) or "")
    assert "own country, ES" in (refusal(GeoPolicy.of("ES", None), "FR", RULES) or "")


def test_default_rules_refuse_the_default_high_cost_list() -> None:
    assert DEFAULT_HIGH_COST and all(refusal(GeoPolicy(), c, GeoRules()) for c in DEFAULT_HIGH_COST)
    assert refusal(GeoPolicy(), "ES", GeoRules()) is None


def test_country_codes_are_checked() -> None:
    assert country_code(" es ") == "ES"
    assert parse_country_list("fr, ES,es") == ["ES", "FR"]
    assert parse_country_list("") == []
    for bad in ("ESP", "XX", "1A", "", "E"):
        with pytest.raises(ValueError):
            country_code(bad)
