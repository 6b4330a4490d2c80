"""The campaign report's arithmetic and the auto-winner's choice, from fixed rows."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from services.reports.campaign_report import build
from services.reports.winner import judge

CAMPAIGN = {
    "campaign_id": uuid.uuid4(), "tenant_id": "acme", "name": "Spring", "state": "running", "phase": "test",
    "published": 2100, "winner": None, "winner_detail": None,
    "variants": [{"name": "A", "template_id": "t1", "percent": 50}, {"name": "B", "template_id": "t2", "percent": 50}],
    "ab_test": {"test_percent": 20, "metric": "click_rate", "wait_s": 3600, "min_sample": 500},
}
MESSAGES = [
    {"variant": "A", "targeted": 1050, "sent": 1010, "delivered": 1000, "undelivered": 8, "failed": 2, "expired": 0,
     "pending": 0, "segments": 1010},
    {"variant": "B", "targeted": 1050, "sent": 1020, "delivered": 1000, "undelivered": 15, "failed": 5, "expired": 0,
     "pending": 0, "segments": 2040},
]
SKIPPED = [
    {"variant": "A", "status": "suppressed", "reason_code": "opted_out", "n": 30},
    {"variant": "A", "status": "suppressed", "reason_code": "frequency_cap", "n": 10},
    {"variant": "B", "status": "suppressed", "reason_code": "opted_out", "n": 30},
]
CLICKS = [
    {"variant": "A", "total": 150, "unique_messages": 120, "bots": 40},
    {"variant": "B", "total": 100, "unique_messages": 90, "bots": 20},
]
CONVERSIONS = [
    {"variant": "A", "currency": "EUR", "n": 12, "revenue": Decimal("480.50")},
    {"variant": "B", "currency": "EUR", "n": 7, "revenue": Decimal("210.00")},
    {"variant": "B", "currency": "USD", "n": 1, "revenue": Decimal("19.99")},
]
AB = [
    {"variant": "A", "sent": 1010, "delivered": 1000, "clicked": 120, "converted": 12},
    {"variant": "B", "sent": 1020, "delivered": 1000, "clicked": 90, "converted": 8},
]


def test_report_per_variant_and_totals() -> None:
    report = build(CAMPAIGN, MESSAGES, SKIPPED, CLICKS, CONVERSIONS, AB, alpha=0.05)
    a, b = report["variants"]
    assert (a["variant"], a["sent"], a["delivered"], a["clicks_unique"], a["clicks_total"]) == ("A", 1010, 1000, 120, 150)
    assert a["skipped"] == {"opted_out": 30, "frequency_cap": 10} and a["skipped_total"] == 40
    assert a["delivery_rate"] == pytest.approx(1000 / 1010, abs=1e-6)
    assert a["click_rate"] == 0.12 and b["click_rate"] == 0.09
    assert a["revenue"] == {"EUR": "480.50"} and b["revenue"] == {"EUR": "210.00", "USD": "19.99"}
    assert b["segments"] == 2040 and b["conversions"] == 8
    t = report["totals"]
    assert (t["targeted"], t["sent"], t["delivered"], t["bot_clicks"], t["conversions"]) == (2100, 2030, 2000, 60, 20)
    assert t["skipped"] == {"opted_out": 60, "frequency_cap": 10}
    assert t["revenue"] == {"EUR": "690.50", "USD": "19.99"} and t["segments"] == 3050


def test_ab_section_uses_the_campaigns_metric() -> None:
    ab = build(CAMPAIGN, MESSAGES, SKIPPED, CLICKS, CONVERSIONS, AB, alpha=0.05)["ab_test"]
    assert (ab["metric"], ab["winner"], ab["significant"], ab["min_sample"]) == ("click_rate", "A", True, 500)
    assert ab["comparisons"][0]["z"] == pytest.approx(2.1883, abs=1e-4)
    campaign = {**CAMPAIGN, "ab_test": {**CAMPAIGN["ab_test"], "metric": "conversion_rate"}}
    ab = build(campaign, MESSAGES, SKIPPED, CLICKS, CONVERSIONS, AB, alpha=0.05)["ab_test"]
    # not significant: no winner, A only leads
    assert (ab["metric"], ab["winner"], ab["leader"], ab["significant"]) == ("conversion_rate", None, "A", False)


def test_an_empty_campaign_lists_its_variants_with_zeros() -> None:
    report = build(CAMPAIGN, [], [], [], [], [], alpha=0.05)
    assert [v["variant"] for v in report["variants"]] == ["A", "B"]
    assert report["totals"]["delivery_rate"] is None and report["ab_test"]["reason"] == "no_data"
    assert report["ab_test"]["winner"] is None and report["ab_test"]["leader"] is None


def test_without_an_ab_test_variants_are_compared_but_none_wins() -> None:
    plain = {**CAMPAIGN, "ab_test": None}
    ab = build(plain, MESSAGES, SKIPPED, CLICKS, CONVERSIONS, AB, alpha=0.05)["ab_test"]
    assert (ab["configured"], ab["significant"], ab["winner"], ab["leader"]) == (False, True, None, "A")


def test_judge_picks_the_significant_winner_or_the_best_and_says_so() -> None:
    winner, detail = judge(CAMPAIGN, AB, alpha=0.05)
    assert (winner, detail["picked_by"], detail["significant"]) == ("A", "significant", True)
    assert "decided_at" in detail
    close = [{**AB[0], "clicked": 95}, AB[1]]
    winner, detail = judge(CAMPAIGN, close, alpha=0.05)
    assert (winner, detail["picked_by"], detail["reason"]) == ("A", "best_rate", "not_significant")
    assert "no variant won significantly" in detail["note"]
    winner, detail = judge(CAMPAIGN, [], alpha=0.05)  # nothing to compare: no winner, the rest gets the split
    assert (winner, detail["picked_by"], detail["reason"]) == (None, "no_data", "no_data")
    assert "no variant has any" in detail["note"]
