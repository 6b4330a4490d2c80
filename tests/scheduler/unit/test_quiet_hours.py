"""Quiet hours: allowed windows, deferrals across midnight, Sundays, public holidays, DST, zones,
tenant overrides, in simulated time (no clock, file or network is read at decision time).

Every expectation is an exact instant: a rule, zone or DST mistake moves it and fails the test.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

import phonenumbers
import pytest
from phonenumbers import geocoder

from services.scheduler.quiet_hours import (
    TZDATA_VERSION,
    FakeClock,
    LooserOverrideError,
    MessageFacts,
    QuietHours,
    RulesError,
    evaluate,
    load_rules,
    parse_rules,
    parse_tenant_overrides,
    resolve_zones,
)
from services.scheduler.quiet_hours.zones import (
    US_AREA_CODES,
    UnknownZoneError,
    load_zone,
    us_state_for_number,
    window_end,
    window_start,
)
from shared.contracts import MessageAccepted
from shared.statuses import MessageType

NEW_YORK = "+12125551234"
TEXAS = "+15125551234"  # Austin, America/Chicago
FLORIDA = "+13055551234"  # Miami, America/New_York
CONNECTICUT = "+12035551234"
MISSISSIPPI = "+16015551234"  # America/Chicago
RHODE_ISLAND = "+14015551234"
NORTH_DAKOTA = "+17015551234"  # area code in America/Denver and America/North_Dakota/Center
TOLL_FREE = "+18005551234"
FRANCE = "+33612345678"
SPAIN = "+34612345678"  # mobile: Europe/Madrid and Atlantic/Canary
INDIA = "+919812345678"
SAO_PAULO = "+5511912345678"
MANAUS = "+5592912345678"  # America/Manaus, UTC-4
UK = "+447912345678"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def marketing(to: str, country: str, **contact: str) -> MessageFacts:
    return MessageFacts(to, country, MessageType.MARKETING, **contact)


def check(to: str, country: str, now: datetime, **contact: str):
    return evaluate(marketing(to, country, **contact), now)


def assert_allowed(decision) -> None:
    assert decision.allowed, decision.reason
    assert decision.next_allowed_at is None


def assert_held_until(decision, expected: datetime, rule_id: str | None = None) -> None:
    assert not decision.allowed, decision.reason
    assert decision.next_allowed_at == expected, decision.reason
    assert decision.next_allowed_at.tzinfo is UTC
    if rule_id is not None:
        assert decision.rule_id == rule_id, decision.reason


# -- United States ---------------------------------------------------------------------------------
def test_us_federal_window_in_new_york_with_deferral_across_midnight() -> None:
    assert_allowed(check(NEW_YORK, "US", utc(2026, 7, 15, 16, 0)))  # Wed 12:00 EDT
    assert_allowed(check(NEW_YORK, "US", utc(2026, 7, 15, 12, 0)))  # 08:00 EDT sharp: window opens
    assert_held_until(check(NEW_YORK, "US", utc(2026, 7, 15, 11, 59)), utc(2026, 7, 15, 12, 0), "us-federal")
    # 21:00 EDT is the end (exclusive): held until 08:00 the next day
    assert_held_until(check(NEW_YORK, "US", utc(2026, 7, 16, 1, 0)), utc(2026, 7, 16, 12, 0), "us-federal")
    # 00:30 EDT, after midnight: the same day's 08:00
    assert_held_until(check(NEW_YORK, "US", utc(2026, 7, 16, 4, 30)), utc(2026, 7, 16, 12, 0))


def test_allowed_decision_says_until_when() -> None:
    decision = check(NEW_YORK, "US", utc(2026, 7, 15, 16, 0))
    assert decision.allowed_until == utc(2026, 7, 16, 1, 0)  # 21:00 EDT
    assert decision.zones == ("America/New_York",) and decision.zone_source == "number"
    assert decision.rule_ids == ("us-federal",)


def test_texas_sunday_starts_at_noon_and_saturday_at_nine() -> None:
    # Sunday 10:00 CDT: federal allows it, Texas does not before noon
    assert_held_until(check(TEXAS, "US", utc(2026, 7, 12, 15, 0)), utc(2026, 7, 12, 17, 0), "us-tx")
    assert_allowed(check(TEXAS, "US", utc(2026, 7, 12, 17, 0)))  # Sunday 12:00 CDT
    assert_held_until(check(TEXAS, "US", utc(2026, 7, 11, 13, 30)), utc(2026, 7, 11, 14, 0), "us-tx")  # Sat 08:30
    decision = check(TEXAS, "US", utc(2026, 7, 11, 14, 0))
    assert decision.allowed and decision.rule_ids == ("us-federal", "us-tx")


def test_florida_stops_at_eight_pm() -> None:
    assert_allowed(check(FLORIDA, "US", utc(2026, 7, 15, 23, 59)))  # 19:59 EDT
    assert_held_until(check(FLORIDA, "US", utc(2026, 7, 16, 0, 30)), utc(2026, 7, 16, 12, 0), "us-fl")  # 20:30


def test_connecticut_nine_to_eight() -> None:
    assert_held_until(check(CONNECTICUT, "US", utc(2026, 7, 15, 12, 30)), utc(2026, 7, 15, 13, 0), "us-ct")
    assert_held_until(check(CONNECTICUT, "US", utc(2026, 7, 16, 0, 15)), utc(2026, 7, 16, 13, 0), "us-ct")


def test_rhode_island_sunday_and_state_holiday_are_days_off() -> None:
    # Sunday noon: held until Monday 09:00 EDT
    assert_held_until(check(RHODE_ISLAND, "US", utc(2026, 7, 12, 16, 0)), utc(2026, 7, 13, 13, 0), "us-ri")
    # Victory Day (RI), Monday 2026-08-10: held until Tuesday 09:00
    decision = check(RHODE_ISLAND, "US", utc(2026, 8, 10, 15, 0))
    assert_held_until(decision, utc(2026, 8, 11, 13, 0), "us-ri")
    assert "Victory Day" in decision.reason


def test_mississippi_hours_are_central_standard_time_and_no_sunday() -> None:
    # July 08:30 CDT is 07:30 CST: held until 08:00 CST = 09:00 CDT = 14:00 UTC
    assert_held_until(check(MISSISSIPPI, "US", utc(2026, 7, 15, 13, 30)), utc(2026, 7, 15, 14, 0), "us-ms")
    # January (CST): 08:00 local is 08:00 CST
    assert_allowed(check(MISSISSIPPI, "US", utc(2026, 1, 14, 14, 0)))
    # Sunday: held until Monday
    assert_held_until(check(MISSISSIPPI, "US", utc(2026, 1, 11, 16, 0)), utc(2026, 1, 12, 14, 0), "us-ms")


def test_contact_state_and_area_code_state_both_apply() -> None:
    # A New York number whose contact lives in Texas: Texas' Sunday noon applies (read in New York time)
    decision = check(NEW_YORK, "US", utc(2026, 7, 12, 14, 0), contact_subdivision="TX")  # Sun 10:00 EDT
    assert_held_until(decision, utc(2026, 7, 12, 16, 0), "us-tx")
    # A Texas number whose contact says Florida: Florida's 20:00 and Texas' Sunday
    decision = check(TEXAS, "US", utc(2026, 7, 13, 1, 30), contact_subdivision="FL")  # Sun 20:30 CDT
    assert_held_until(decision, utc(2026, 7, 13, 14, 0), "us-fl")
    assert decision.rule_ids == ("us-federal", "us-fl", "us-tx")
    # a contact state that is not a state code is ignored (and said), not taken as "state known"
    decision = check(TOLL_FREE, "US", utc(2026, 7, 12, 20, 0), contact_subdivision="Texas")
    assert "us-ri" in decision.rule_ids and "'Texas' is not a US code" in decision.reason
    assert_allowed(check(SPAIN, "ES", utc(2026, 9, 11, 10, 0), contact_subdivision="md"))  # case-insensitive


def test_multi_zone_area_code_allows_only_what_every_zone_allows() -> None:
    # +1 701 maps to America/Denver and America/North_Dakota/Center (Central)
    zones = set(resolve_zones(NORTH_DAKOTA, "US").zones)
    assert zones == {"America/Denver", "America/North_Dakota/Center"}
    # 08:30 CDT = 07:30 MDT: not yet 08:00 in Denver
    decision = check(NORTH_DAKOTA, "US", utc(2026, 7, 15, 13, 30))
    assert_held_until(decision, utc(2026, 7, 15, 14, 0), "us-federal")  # 08:00 MDT
    assert set(decision.zones) == zones
    # 20:30 CDT = 19:30 MDT: Central closes first, at 21:00 CDT = 02:00 UTC
    assert check(NORTH_DAKOTA, "US", utc(2026, 7, 16, 1, 30)).allowed_until == utc(2026, 7, 16, 2, 0)
    assert_held_until(check(NORTH_DAKOTA, "US", utc(2026, 7, 16, 2, 0)), utc(2026, 7, 16, 14, 0))


def test_toll_free_number_uses_us_zones_and_every_state_rule() -> None:
    resolution = resolve_zones(TOLL_FREE, "US")
    assert resolution.source == "number"
    assert "Pacific/Guam" not in resolution.zones and "America/Jamaica" not in resolution.zones
    assert {"America/New_York", "Pacific/Honolulu"} <= set(resolution.zones)
    assert us_state_for_number(TOLL_FREE) is None
    # Sunday: Rhode Island (no Sunday) applies when the state is unknown
    decision = check(TOLL_FREE, "US", utc(2026, 7, 12, 20, 0))
    assert not decision.allowed and decision.next_allowed_at.weekday() == 0
    assert "us-ri" in decision.rule_ids and "state unknown" in decision.reason
    # Tuesday 16:30 EDT / 10:30 HST: inside every state's window in every zone
    assert_allowed(check(TOLL_FREE, "US", utc(2026, 7, 14, 20, 30)))


def test_unknown_number_zone_falls_back_to_the_country_zones() -> None:
    resolution = resolve_zones("+15550100", "US")  # phonenumbers: Etc/Unknown
    assert resolution.source == "country"
    assert resolution.zones[0] == "America/New_York" and "Pacific/Honolulu" in resolution.zones


def test_contact_zone_wins_over_the_number_and_a_bad_one_is_ignored() -> None:
    # A New York number, contact in Los Angeles: 08:30 EDT is 05:30 PDT
    decision = check(NEW_YORK, "US", utc(2026, 7, 15, 12, 30), contact_timezone="America/Los_Angeles")
    assert_held_until(decision, utc(2026, 7, 15, 15, 0))
    assert decision.zones == ("America/Los_Angeles",) and decision.zone_source == "contact"
    decision = check(NEW_YORK, "US", utc(2026, 7, 15, 12, 30), contact_timezone="Mars/Olympus_Mons")
    assert decision.zones == ("America/New_York",) and decision.zone_source == "number"
    assert "Mars/Olympus_Mons" in decision.reason
    # a backward link is accepted and named canonically
    assert resolve_zones(INDIA, "IN", "Asia/Calcutta").zones == ("Asia/Kolkata",)


# -- France ------------------------------------------------------------------------------------------
def test_france_evening_is_held_until_eight_next_morning() -> None:
    assert_allowed(check(FRANCE, "FR", utc(2026, 7, 15, 17, 59)))  # Wed 19:59 CEST
    assert_held_until(check(FRANCE, "FR", utc(2026, 7, 15, 18, 0)), utc(2026, 7, 16, 6, 0), "fr")  # 20:00
    assert_held_until(check(FRANCE, "FR", utc(2026, 7, 15, 22, 30)), utc(2026, 7, 16, 6, 0), "fr")  # 00:30


def test_france_sunday_is_off_and_saturday_is_not() -> None:
    assert_allowed(check(FRANCE, "FR", utc(2026, 7, 11, 10, 0)))  # Saturday noon
    decision = check(FRANCE, "FR", utc(2026, 7, 12, 10, 0))  # Sunday noon
    assert_held_until(decision, utc(2026, 7, 13, 6, 0), "fr")
    assert "Sunday is a day off" in decision.reason
    # Saturday 20:00: held over Sunday to Monday 08:00
    assert_held_until(check(FRANCE, "FR", utc(2026, 7, 11, 18, 0)), utc(2026, 7, 13, 6, 0))


def test_france_public_holidays_14_july_and_1_may() -> None:
    decision = check(FRANCE, "FR", utc(2026, 7, 14, 10, 0))  # Tuesday, Fête nationale
    assert_held_until(decision, utc(2026, 7, 15, 6, 0), "fr")
    assert "public holiday" in decision.reason and "2026-07-14" in decision.reason
    # 1 May 2026 is a Friday: held until Saturday 2 May 08:00
    assert_held_until(check(FRANCE, "FR", utc(2026, 5, 1, 9, 0)), utc(2026, 5, 2, 6, 0), "fr")
    # Thursday 30 April at 20:00: over the holiday too
    assert_held_until(check(FRANCE, "FR", utc(2026, 4, 30, 18, 0)), utc(2026, 5, 2, 6, 0))


def test_france_alsace_moselle_holidays_count_when_the_department_is_unknown() -> None:
    good_friday = utc(2026, 4, 3, 10, 0)  # a holiday in Moselle and Alsace only
    assert_held_until(check(FRANCE, "FR", good_friday), utc(2026, 4, 4, 6, 0), "fr")
    assert_held_until(check(FRANCE, "FR", good_friday, contact_subdivision="57"), utc(2026, 4, 4, 6, 0))
    decision = check(FRANCE, "FR", good_friday, contact_subdivision="Zone C")  # Paris: a school zone
    assert_allowed(decision)
    assert "ignored" not in decision.reason


# -- Spain ---------------------------------------------------------------------------------------------
def test_spain_weekdays_only_in_both_mainland_and_canary_time() -> None:
    zones = resolve_zones(SPAIN, "ES").zones
    assert set(zones) == {"Europe/Madrid", "Atlantic/Canary"}
    # Monday 09:30 CEST = 08:30 WEST (Canary): not yet 09:00 in the Canaries
    assert_held_until(check(SPAIN, "ES", utc(2026, 7, 13, 7, 30)), utc(2026, 7, 13, 8, 0), "es")
    assert_allowed(check(SPAIN, "ES", utc(2026, 7, 17, 18, 30)))  # Friday 20:30 CEST
    # Friday 21:00 CEST: held over the weekend to Monday 09:00 WEST (10:00 CEST)
    assert_held_until(check(SPAIN, "ES", utc(2026, 7, 17, 19, 0)), utc(2026, 7, 20, 8, 0), "es")
    assert not check(SPAIN, "ES", utc(2026, 7, 18, 10, 0)).allowed  # Saturday


def test_spain_national_and_regional_holidays() -> None:
    # Fiesta Nacional, Monday 12 October 2026
    assert_held_until(check(SPAIN, "ES", utc(2026, 10, 12, 10, 0)), utc(2026, 10, 13, 8, 0), "es")
    # Diada (Catalonia), Friday 11 September: held when the region is unknown or Catalonia...
    diada = utc(2026, 9, 11, 10, 0)
    assert_held_until(check(SPAIN, "ES", diada), utc(2026, 9, 14, 8, 0))
    assert not check(SPAIN, "ES", diada, contact_subdivision="CT").allowed
    # ...but a contact known to live in Madrid gets it
    assert_allowed(check(SPAIN, "ES", diada, contact_subdivision="MD"))


# -- India and Brazil ------------------------------------------------------------------------------------
def test_india_nine_to_nine_every_day() -> None:
    assert_held_until(check(INDIA, "IN", utc(2026, 7, 12, 3, 29)), utc(2026, 7, 12, 3, 30), "in")  # Sun 08:59 IST
    assert_allowed(check(INDIA, "IN", utc(2026, 7, 12, 3, 30)))  # Sunday 09:00 IST is fine in India
    assert_held_until(check(INDIA, "IN", utc(2026, 7, 12, 15, 30)), utc(2026, 7, 13, 3, 30), "in")  # 21:00 IST
    assert check(INDIA, "IN", utc(2026, 7, 12, 3, 30)).zones == ("Asia/Kolkata",)


def test_brazil_sunday_holiday_and_its_zones() -> None:
    assert_allowed(check(SAO_PAULO, "BR", utc(2026, 7, 11, 12, 0)))  # Saturday 09:00 BRT
    assert_held_until(check(SAO_PAULO, "BR", utc(2026, 7, 12, 15, 0)), utc(2026, 7, 13, 12, 0), "br")  # Sunday
    # Independence Day, Monday 7 September: held until Tuesday 09:00
    assert_held_until(check(SAO_PAULO, "BR", utc(2026, 9, 7, 15, 0)), utc(2026, 9, 8, 12, 0), "br")
    # Manaus is UTC-4: 09:30 in São Paulo is 08:30 there
    assert_allowed(check(SAO_PAULO, "BR", utc(2026, 7, 13, 12, 30)))
    assert_held_until(check(MANAUS, "BR", utc(2026, 7, 13, 12, 30)), utc(2026, 7, 13, 13, 0), "br")
    # 21:00 in Manaus = 01:00 UTC next day; Friday evening → Saturday 09:00 -04
    assert_held_until(check(MANAUS, "BR", utc(2026, 7, 11, 1, 0)), utc(2026, 7, 11, 13, 0))


# -- DST ----------------------------------------------------------------------------------------------------
def test_us_spring_forward_next_morning_is_in_daylight_time() -> None:
    # Saturday 7 March 2026 22:00 EST; clocks go forward Sunday 02:00 → 08:00 EDT = 12:00 UTC
    assert_held_until(check(NEW_YORK, "US", utc(2026, 3, 8, 3, 0)), utc(2026, 3, 8, 12, 0))
    assert_allowed(check(NEW_YORK, "US", utc(2026, 3, 8, 12, 0)))
    assert not check(NEW_YORK, "US", utc(2026, 3, 8, 11, 59)).allowed


def test_us_fall_back_next_morning_is_in_standard_time() -> None:
    # Saturday 31 October 22:00 EDT; clocks go back Sunday 02:00 → 08:00 EST = 13:00 UTC
    assert_held_until(check(NEW_YORK, "US", utc(2026, 11, 1, 2, 0)), utc(2026, 11, 1, 13, 0))
    # 12:30 UTC is 07:30 EST: still early (in EDT it would have been 08:30)
    assert not check(NEW_YORK, "US", utc(2026, 11, 1, 12, 30)).allowed


def test_eu_spring_forward_and_fall_back() -> None:
    # UK (daily 09:00-20:00): Saturday 28 March 21:00 GMT → Sunday 09:00 BST = 08:00 UTC
    assert_held_until(check(UK, "GB", utc(2026, 3, 28, 21, 0)), utc(2026, 3, 29, 8, 0), "gb")
    # France: Saturday 28 March 20:30 CET → Monday 30 March 08:00 CEST = 06:00 UTC
    assert_held_until(check(FRANCE, "FR", utc(2026, 3, 28, 19, 30)), utc(2026, 3, 30, 6, 0))
    # France: Saturday 24 October 21:00 CEST → Monday 26 October 08:00 CET = 07:00 UTC
    assert_held_until(check(FRANCE, "FR", utc(2026, 10, 24, 19, 0)), utc(2026, 10, 26, 7, 0))
    # Spain on the same weekend: Monday 09:00 in the Canaries (WET) = 09:00 UTC
    assert_held_until(check(SPAIN, "ES", utc(2026, 10, 23, 19, 0)), utc(2026, 10, 26, 9, 0))


NIGHT_RULES = {
    "version": 1,
    "default": {
        "id": "default", "name": "test default", "windows": {"daily": "08:00-21:00"},
        "sources": [{"kind": "vendor", "citation": "test"}], "last_checked": "2026-11-25",
    },
    "countries": {
        "XA": {"rule": {"id": "xa", "name": "night window", "windows": {"daily": "02:30-05:00"},
                        "sources": [{"kind": "vendor", "citation": "test"}], "last_checked": "2026-11-25"}},
        "XB": {"rule": {"id": "xb", "name": "window ending in the gap", "windows": {"daily": "00:00-02:30"},
                        "sources": [{"kind": "vendor", "citation": "test"}], "last_checked": "2026-11-25"}},
        "XC": {"rule": {"id": "xc", "name": "window starting in the repeated hour", "windows": {"daily": "01:30-05:00"},
                        "sources": [{"kind": "vendor", "citation": "test"}], "last_checked": "2026-11-25"}},
    },
}


def _night(country: str, now: datetime):
    facts = marketing(NEW_YORK, country, contact_timezone="America/New_York")
    return evaluate(facts, now, rules=parse_rules(NIGHT_RULES))


def test_window_starting_in_the_spring_forward_gap_opens_when_the_clock_jumps() -> None:
    # 8 March 2026: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:30 never happens
    assert_held_until(_night("XA", utc(2026, 3, 8, 6, 0)), utc(2026, 3, 8, 7, 0))  # 01:00 EST
    assert _night("XA", utc(2026, 3, 8, 7, 0)).allowed_until == utc(2026, 3, 8, 9, 0)  # 05:00 EDT
    assert_held_until(_night("XA", utc(2026, 3, 7, 6, 0)), utc(2026, 3, 7, 7, 30))  # the day before: 02:30 EST
    # a window ending at the nonexistent 02:30 closes when the clock jumps
    assert _night("XB", utc(2026, 3, 8, 6, 0)).allowed_until == utc(2026, 3, 8, 7, 0)


def test_window_starting_in_the_repeated_hour_opens_on_the_second_pass() -> None:
    # 1 November 2026: 01:00-02:00 happens twice (EDT, then EST); 01:30 EST = 06:30 UTC
    assert_held_until(_night("XC", utc(2026, 11, 1, 5, 45)), utc(2026, 11, 1, 6, 30))  # 01:45 EDT, first pass
    assert _night("XC", utc(2026, 11, 1, 6, 30)).allowed
    assert_held_until(_night("XC", utc(2026, 10, 31, 5, 0)), utc(2026, 10, 31, 5, 30))  # a normal day: 01:30 EDT


def test_window_edges_directly() -> None:
    ny = load_zone("America/New_York")
    assert window_start(date(2026, 3, 8), 150, ny) == utc(2026, 3, 8, 7, 0)  # 02:30: nonexistent
    assert window_end(date(2026, 3, 8), 150, ny) == utc(2026, 3, 8, 7, 0)
    assert window_start(date(2026, 11, 1), 90, ny) == utc(2026, 11, 1, 6, 30)  # 01:30: ambiguous, second
    assert window_end(date(2026, 11, 1), 90, ny) == utc(2026, 11, 1, 5, 30)  # first
    assert window_end(date(2026, 7, 15), 1440, ny) == utc(2026, 7, 16, 4, 0)  # 24:00 = next midnight


# -- tenant overrides --------------------------------------------------------------------------------------
def test_stricter_tenant_override_is_accepted_and_applied() -> None:
    overrides = parse_tenant_overrides({"FR": {"windows": {"mon-sat": "10:00-18:00"}}})
    decision = evaluate(marketing(FRANCE, "FR"), utc(2026, 7, 15, 7, 0), overrides)  # Wed 09:00 CEST
    assert_held_until(decision, utc(2026, 7, 15, 8, 0), "tenant-fr")
    assert decision.rule_ids == ("fr", "tenant-fr")
    # the legal rule still applies where the override says nothing: Sunday stays off
    assert not evaluate(marketing(FRANCE, "FR"), utc(2026, 7, 12, 10, 0), overrides).allowed
    # an override for one country does not touch another
    assert_allowed(evaluate(marketing(NEW_YORK, "US"), utc(2026, 7, 15, 12, 30), overrides))


def test_tenant_override_for_every_country_with_holidays() -> None:
    overrides = parse_tenant_overrides({"*": {"windows": {"daily": "09:00-20:00"}, "holidays": True}})
    assert_held_until(evaluate(marketing(INDIA, "IN"), utc(2026, 8, 15, 6, 0), overrides), utc(2026, 8, 16, 3, 30), "tenant-all")
    # Florida (8-20) and the tenant (9-20): 08:30 EDT held until 09:00
    assert_held_until(evaluate(marketing(FLORIDA, "US"), utc(2026, 7, 15, 12, 30), overrides), utc(2026, 7, 15, 13, 0), "tenant-all")
    # US Independence Day (the recipient country's holiday) held by the tenant, not by the law
    decision = evaluate(marketing(FLORIDA, "US"), utc(2026, 7, 3, 15, 0), overrides)  # observed, Friday 3 July
    assert not decision.allowed and decision.rule_id == "tenant-all"


def test_looser_tenant_overrides_are_refused_with_a_clear_error() -> None:
    with pytest.raises(LooserOverrideError, match=r"US-TX.*Sunday 10:00-12:00.*allowed: 12:00-21:00"):
        parse_tenant_overrides({"US-TX": {"windows": {"sun": "10:00-21:00"}}})
    with pytest.raises(LooserOverrideError, match=r"FR.*Sunday"):
        parse_tenant_overrides({"FR": {"windows": {"sun": "10:00-12:00"}}})
    with pytest.raises(LooserOverrideError, match=r"\*.*07:00-08:00"):
        parse_tenant_overrides({"*": {"windows": {"daily": "07:00-21:00"}}})
    with pytest.raises(LooserOverrideError):  # RI has no Sunday: any Sunday window is looser
        parse_tenant_overrides({"us-ri": {"windows": {"sun": "12:00-13:00"}}})
    with pytest.raises(RulesError, match="no time"):
        parse_tenant_overrides({"FR": {"windows": {"daily": "off"}}})
    with pytest.raises(LooserOverrideError):  # a raw mapping given to evaluate is checked too
        evaluate(marketing(TEXAS, "US"), utc(2026, 7, 12, 15, 0), {"US-TX": {"windows": {"sun": "09:00-21:00"}}})
    # the same override, narrowed, is fine
    assert parse_tenant_overrides({"US-TX": {"windows": {"sun": "13:00-20:00"}}}).rules["US-TX"].id == "tenant-us-tx"


# -- transactional, clock, invariants ----------------------------------------------------------------------
def test_transactional_messages_are_never_deferred() -> None:
    for to, country, now in [(FRANCE, "FR", utc(2026, 7, 12, 1, 0)), (TEXAS, "US", utc(2026, 7, 12, 8, 0)),
                             (SPAIN, "ES", utc(2026, 10, 12, 2, 0))]:
        decision = evaluate(MessageFacts(to, country, MessageType.TRANSACTIONAL), now)
        assert decision.allowed and decision.next_allowed_at is None
        assert decision.rule_id == "transactional" and "transactional" in decision.reason


def test_facts_from_a_message_and_timeline_detail() -> None:
    message = MessageAccepted(
        message_id=uuid.uuid4(), to=FRANCE, country="FR", body="Promo", type="marketing", encoding="GSM-7",
        segments=1, source="api", accepted_at=utc(2026, 7, 12, 10, 0),
    )
    decision = evaluate(MessageFacts.from_message(message), utc(2026, 7, 12, 10, 0))
    detail = decision.detail()
    assert detail["quiet_hours"] == "deferred" and detail["quiet_hours_rule"] == "fr"
    assert detail["quiet_hours_next_allowed_at"] == "2026-07-13T06:00:00+00:00"
    assert detail["quiet_hours_zones"] == "Europe/Paris" and detail["quiet_hours_tzdata"] == TZDATA_VERSION
    assert all(isinstance(value, str) for value in detail.values())


def test_simulated_clock_drives_a_deferral_to_release() -> None:
    clock = FakeClock(utc(2026, 7, 11, 19, 0))  # Saturday 21:00 CEST
    engine = QuietHours(clock=clock)
    facts = marketing(FRANCE, "FR")
    first = engine.evaluate(facts)
    assert not first.allowed
    clock.advance(hours=12)  # Sunday morning: still held, same release time
    assert engine.evaluate(facts).next_allowed_at == first.next_allowed_at == utc(2026, 7, 13, 6, 0)
    clock.set(first.next_allowed_at)
    assert engine.evaluate(facts).allowed
    with pytest.raises(ValueError):
        clock.advance(timedelta(seconds=-1))


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(marketing(FRANCE, "FR"), datetime(2026, 7, 15, 10, 0))  # noqa: DTZ001 - the naive time under test
    with pytest.raises(ValueError):
        FakeClock(datetime(2026, 7, 15, 10, 0))  # noqa: DTZ001 - the naive time under test


@pytest.mark.parametrize("to,country", [(NEW_YORK, "US"), (TEXAS, "US"), (NORTH_DAKOTA, "US"), (RHODE_ISLAND, "US"),
                                        (FRANCE, "FR"), (SPAIN, "ES"), (INDIA, "IN"), (MANAUS, "BR"), (UK, "GB")])
def test_never_dropped_and_next_allowed_is_the_first_allowed_minute(to: str, country: str) -> None:
    rng = random.Random(f"{to}-{country}")
    facts = marketing(to, country)
    for _ in range(40):
        now = utc(2026, 1, 1) + timedelta(minutes=rng.randrange(365 * 24 * 60))
        decision = evaluate(facts, now)
        if decision.allowed:
            assert decision.allowed_until is not None and decision.allowed_until > now
            continue
        release = decision.next_allowed_at
        assert now < release < now + timedelta(days=8), decision.reason
        assert evaluate(facts, release).allowed, f"{release} should be allowed: {decision.reason}"
        assert not evaluate(facts, release - timedelta(minutes=1)).allowed


# -- the rules data and its sources -----------------------------------------------------------------------
def test_every_rule_has_a_source_and_a_recent_check() -> None:
    book = load_rules()
    for code in ("US", "FR", "CA", "IN", "BR", "ES", "DE", "GB"):
        assert book.country(code) is not None, code
    assert {"CT", "FL", "MD", "MS", "NJ", "OK", "RI", "TX"} <= set(book.country("US").subdivisions)
    for rule in book.rules():
        assert rule.sources and all(source.citation for source in rule.sources), rule.id
        assert rule.last_checked is not None and rule.last_checked >= date(2026, 1, 1), rule.id
    canada = book.country("CA").rule
    assert canada.describe().startswith("Mon-Fri 09:00-21:30; Sat-Sun 10:00-18:00")


def test_canada_weekend_hours() -> None:
    toronto = "+14165551234"
    assert_held_until(check(toronto, "CA", utc(2026, 7, 11, 22, 0)), utc(2026, 7, 12, 14, 0), "ca")  # Sat 18:00 EDT
    assert_allowed(check(toronto, "CA", utc(2026, 7, 14, 1, 15)))  # Mon 21:15 EDT


def test_unknown_country_gets_the_default_rule() -> None:
    decision = check("+6281234567890", "ID", utc(2026, 7, 11, 0, 30))  # 07:30 in Jakarta
    assert_held_until(decision, utc(2026, 7, 11, 1, 0), "default")


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda data: data["default"].update(colour="red"), "unknown field"),
        (lambda data: data["default"].update(windows={"mon-sat": "08:00-21:00"}), "Sunday"),
        (lambda data: data["default"].update(windows={"daily": "21:00-08:00"}), "ends before it starts"),
        (lambda data: data["default"].update(windows={"daily": "08:00-21:00", "mon": "off"}), "given twice"),
        (lambda data: data["default"].update(sources=[]), "source"),
        (lambda data: data["default"].update(last_checked="soon"), "last_checked"),
        (lambda data: data["default"].update(windows={"daily": "off"}), "every day is off"),
        (lambda data: data["countries"]["XA"]["rule"].update(holidays={"calendar": "ZZ"}), "no calendar"),
        (lambda data: data["countries"]["XA"]["rule"].update(zones=["Mars/Base"]), "not a tzdata zone"),
        (lambda data: data["countries"]["XB"]["rule"].update(id="xa"), "used twice"),
    ],
)
def test_rules_loader_refuses_invalid_data(mutate, message: str) -> None:
    import copy

    data = copy.deepcopy(NIGHT_RULES)
    mutate(data)
    with pytest.raises(RulesError, match=message):
        parse_rules(data)


STATE_NAMES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA", "Colorado": "CO",
    "Connecticut": "CT", "Delaware": "DE", "Washington D.C.": "DC", "Florida": "FL", "Georgia": "GA", "Hawaii": "HI",
    "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS", "Kentucky": "KY",
    "Louisiana": "LA", "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN",
    "Mississippi": "MS", "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH",
    "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC", "North Dakota": "ND",
    "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI",
    "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT",
    "Virginia": "VA", "Washington": "WA", "Washington State": "WA", "West Virginia": "WV", "Wisconsin": "WI",
    "Wyoming": "WY",
}


def test_us_area_code_table_matches_the_phonenumbers_geocoder() -> None:
    assert us_state_for_number(TEXAS) == "TX" and us_state_for_number(NORTH_DAKOTA) == "ND"
    assert us_state_for_number("+14165551234") is None  # Toronto: not US
    for area_code, state in US_AREA_CODES.items():
        number = phonenumbers.parse(f"+1{area_code}2345678")
        assert phonenumbers.region_code_for_number(number) == "US", area_code
        description = geocoder.description_for_number(number, "en")
        told = description.rsplit(", ", 1)[1] if ", " in description else STATE_NAMES.get(description)
        assert told == state, (area_code, description)
    assert len(US_AREA_CODES) > 300


def test_zones_come_from_the_pinned_tzdata_package() -> None:
    import tzdata

    assert TZDATA_VERSION == tzdata.IANA_VERSION == "2026f"
    zone = load_zone("Europe/Paris")
    assert str(zone) == "Europe/Paris" and zone is load_zone("Europe/Paris")
    assert utc(2026, 7, 1).astimezone(zone).utcoffset() == timedelta(hours=2)
    for bad in ("../../etc/passwd", "Europe/Nowhere", "Etc/Unknown", ""):
        with pytest.raises(UnknownZoneError):
            load_zone(bad)


def _narrow_spain() -> dict:
    import copy

    data = copy.deepcopy(NIGHT_RULES)
    data["countries"] = {"ES": {"rule": {"id": "es-narrow", "name": "one hour", "windows": {"daily": "08:00-09:00"},
                                         "sources": [{"kind": "vendor", "citation": "test"}], "last_checked": "2026-11-25"}}}
    return data


def test_zones_with_no_common_moment_fall_back_to_the_main_zone_never_drop() -> None:
    # 08:00-09:00 in Madrid (06-07 UTC) and in the Canaries (07-08 UTC) never overlap
    decision = evaluate(marketing(SPAIN, "ES"), utc(2026, 7, 15, 10, 0), rules=parse_rules(_narrow_spain()))
    assert_held_until(decision, utc(2026, 7, 16, 6, 0))  # 08:00 CEST, Madrid alone
    assert decision.zones == ("Europe/Madrid",) and "decided in Europe/Madrid alone" in decision.reason


def test_rules_that_leave_no_time_at_all_raise_instead_of_dropping() -> None:
    from services.scheduler.quiet_hours import NoAllowedTimeError

    book = parse_rules(_narrow_spain())
    overrides = parse_tenant_overrides({"*": {"windows": {"daily": "10:00-11:00"}}}, book)  # stricter than the default
    with pytest.raises(NoAllowedTimeError, match="es-narrow"):
        evaluate(marketing(SPAIN, "ES", contact_timezone="Europe/Madrid"), utc(2026, 7, 15, 10, 0), overrides, rules=book)


def test_docs_name_every_rule() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "quiet-hours.md").read_text(encoding="utf-8")
    missing = [rule.id for rule in load_rules().rules() if f"`{rule.id}`" not in text]
    assert not missing, f"docs/quiet-hours.md has no row for {missing}"
