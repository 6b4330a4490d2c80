"""A message's validity as gateways send it: time left, SMPP formats, Twilio's range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.gateways.validity import (
    clamp_http,
    remaining_s,
    smpp_absolute,
    smpp_relative,
    smpp_validity_period,
)
from services.simulator.core import RequestError, parse_submit
from services.simulator.smpp import validity_seconds

NOW = datetime(2026, 12, 5, 11, 30, 0, tzinfo=UTC)


def test_remaining_is_the_time_left_rounded_down_and_at_least_one_second() -> None:
    assert remaining_s(None, NOW) is None
    assert remaining_s(NOW + timedelta(seconds=299, milliseconds=900), NOW) == 299
    assert remaining_s(NOW + timedelta(milliseconds=300), NOW) == 1
    assert remaining_s(NOW - timedelta(seconds=5), NOW) == 1  # the dispatcher expires those before sending


@pytest.mark.parametrize(("seconds", "expected"), [(0, 1), (1, 1), (300, 300), (36_000, 36_000), (36_001, 36_000), (10**7, 36_000)])
def test_http_validity_is_clamped_to_1_to_36000(seconds: int, expected: int) -> None:
    assert clamp_http(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(1, "000000000001000R"), (300, "000000000500000R"), (36_000, "000000100000000R"),
     (86_400 + 3661, "000001010101000R"), (200 * 86_400, "000099235959000R")],
)
def test_smpp_relative_format(seconds: int, expected: str) -> None:
    assert smpp_relative(seconds) == expected
    assert len(expected) == 16


def test_smpp_absolute_format_is_utc() -> None:
    local = datetime(2026, 12, 5, 12, 30, 5, 700_000, tzinfo=UTC)
    assert smpp_absolute(local) == "261205123005700+"
    madrid = datetime(2026, 12, 5, 13, 30, 5, tzinfo=ZoneInfo("Europe/Madrid"))
    assert smpp_absolute(madrid) == "261205123005000+"


def test_validity_period_of_a_message() -> None:
    assert smpp_validity_period(None, NOW) == ""
    assert smpp_validity_period(NOW + timedelta(seconds=90), NOW) == "000000000130000R"
    assert smpp_validity_period(NOW + timedelta(seconds=90), NOW, "off") == ""
    assert smpp_validity_period(NOW + timedelta(seconds=90), NOW, "absolute") == "261205113130000+"


def test_the_simulator_reads_both_smpp_forms_back() -> None:
    at = NOW.timestamp()
    assert validity_seconds("", at) is None
    assert validity_seconds("garbage", at) is None
    assert validity_seconds("000000000130000R", at) == 90
    assert validity_seconds(smpp_relative(86_400 + 3661), at) == 86_400 + 3661
    assert validity_seconds("261205113130000+", at) == 90
    assert validity_seconds("261205123130004+", at) == 90  # 12:31:30 at UTC+1 (4 quarter hours)
    assert validity_seconds("261205113000000+", at) == 0  # already past


def test_the_simulator_http_face_takes_validity_s() -> None:
    base = {"to": "+34600000001", "body": "hi", "client_ref": "r1"}
    assert parse_submit(base).validity_s is None
    assert parse_submit({**base, "validity_s": 120}).validity_s == 120
    for bad in (0, 36_001, "120", 1.5):
        with pytest.raises(RequestError):
            parse_submit({**base, "validity_s": bad})
