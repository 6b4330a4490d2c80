"""The scheduler as the single gate: campaign state, consent and frequency caps, with reasons."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.domain import (
    CampaignState,
    Cap,
    Contact,
    Facts,
    Releases,
    TenantPolicy,
    Verdict,
    decide,
    parse_caps,
)
from shared.contracts import MessageAccepted
from tests import factories

NOON_MADRID = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # Wednesday 12:00 in Spain
PHONE = "+34600000001"
CONSENTED = Contact(uuid.uuid4(), marketing=True)
DAY, WEEK = timedelta(days=1), timedelta(days=7)


def _message(kind: str = "marketing", to: str = PHONE, campaign: uuid.UUID | None = None) -> MessageAccepted:
    return factories.accepted(to=to, type=kind, accepted_at=NOON_MADRID, campaign_id=campaign)


def _facts(**kw: object) -> Facts:
    return Facts(**{"contacts": {("acme", PHONE): CONSENTED}, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("contact", "mode", "verdict", "reason"),
    [
        (CONSENTED, "required", Verdict.RELEASE, None),
        (None, "required", Verdict.SUPPRESS, "no_contact"),
        (Contact(uuid.uuid4(), marketing=None), "required", Verdict.SUPPRESS, "no_consent"),
        (Contact(uuid.uuid4(), marketing=False), "required", Verdict.SUPPRESS, "consent_revoked"),
        (None, "opt_out", Verdict.RELEASE, None),
        (Contact(uuid.uuid4(), marketing=None), "opt_out", Verdict.RELEASE, None),
        (Contact(uuid.uuid4(), marketing=False), "opt_out", Verdict.SUPPRESS, "consent_revoked"),
    ],
)
def test_marketing_consent_by_tenant_mode(contact: Contact | None, mode: str, verdict: Verdict, reason: str | None) -> None:
    facts = Facts(contacts={("acme", PHONE): contact} if contact else {}, policies={"acme": TenantPolicy(mode)})
    decision = decide("acme", _message(), facts, NOON_MADRID)
    assert (decision.verdict, decision.reason_code) == (verdict, reason)


def test_transactional_needs_no_marketing_consent_and_ignores_caps() -> None:
    facts = Facts(policies={"acme": TenantPolicy("required", (Cap(0, DAY),))})
    assert decide("acme", _message("transactional"), facts, NOON_MADRID).verdict is Verdict.RELEASE
    assert facts.releases.added == []  # transactional messages do not count against caps


def test_suppression_is_reported_before_consent() -> None:
    facts = _facts(suppressions={("acme", PHONE): "opt_out"})
    assert decide("acme", _message(), facts, NOON_MADRID).reason_code == "suppressed"


def test_frequency_caps_count_the_batch_and_history() -> None:
    caps = (Cap(1, DAY), Cap(4, WEEK))
    facts = _facts(policies={"acme": TenantPolicy("required", caps)})
    first, second = _message(), _message()
    assert decide("acme", first, facts, NOON_MADRID).verdict is Verdict.RELEASE
    capped = decide("acme", second, facts, NOON_MADRID)
    assert (capped.verdict, capped.reason_code) == (Verdict.SUPPRESS, "frequency_capped")
    assert capped.detail == {"cap": "1 per 1 days", "sent_in_window": "1"}
    assert [row[2] for row in facts.releases.added] == [first.message_id]
    # A day later the daily cap allows one more; after 4 in a week the weekly cap holds.
    history = Releases({("acme", PHONE): [(uuid.uuid4(), NOON_MADRID - timedelta(days=d)) for d in (2, 3, 4, 5)]})
    facts = _facts(policies={"acme": TenantPolicy("required", caps)}, releases=history)
    weekly = decide("acme", _message(), facts, NOON_MADRID)
    assert weekly.reason_code == "frequency_capped" and "4 per 7 days" in (weekly.reason or "")
    old = Releases({("acme", PHONE): [(uuid.uuid4(), NOON_MADRID - timedelta(days=d)) for d in (2, 3, 8, 9)]})
    facts = _facts(policies={"acme": TenantPolicy("required", caps)}, releases=old)
    assert decide("acme", _message(), facts, NOON_MADRID).verdict is Verdict.RELEASE


def test_a_redelivered_message_is_not_capped_by_its_own_release() -> None:
    message = _message()
    history = Releases({("acme", PHONE): [(message.message_id, NOON_MADRID - timedelta(minutes=1))]})
    facts = _facts(policies={"acme": TenantPolicy("required", (Cap(1, DAY),))}, releases=history)
    assert decide("acme", message, facts, NOON_MADRID).verdict is Verdict.RELEASE
    assert facts.releases.added == []


def test_campaign_caps_add_to_the_tenant_caps() -> None:
    campaign = uuid.uuid4()
    history = Releases({("acme", PHONE): [(uuid.uuid4(), NOON_MADRID - timedelta(hours=30))]})
    facts = _facts(campaigns={campaign: CampaignState("running", (Cap(1, timedelta(days=2)),))}, releases=history)
    assert decide("acme", _message(campaign=campaign), facts, NOON_MADRID).reason_code == "frequency_capped"
    assert decide("acme", _message(), facts, NOON_MADRID).verdict is Verdict.RELEASE  # not in the campaign


def test_paused_campaign_holds_and_cancelled_campaign_suppresses() -> None:
    paused, cancelled, running = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    facts = _facts(campaigns={
        paused: CampaignState("paused"), cancelled: CampaignState("cancelled"), running: CampaignState("running"),
    })
    held = decide("acme", _message(campaign=paused), facts, NOON_MADRID)
    assert (held.verdict, held.reason_code) == (Verdict.DEFER, "campaign_paused") and held.due_at > NOON_MADRID
    gone = decide("acme", _message(campaign=cancelled), facts, NOON_MADRID)
    assert (gone.verdict, gone.reason_code) == (Verdict.SUPPRESS, "campaign_cancelled")
    assert decide("acme", _message(campaign=running), facts, NOON_MADRID).verdict is Verdict.RELEASE
    # A cancelled campaign stops its transactional messages too (an outage notice, say).
    assert decide("acme", _message("transactional", campaign=cancelled), facts, NOON_MADRID).verdict is Verdict.SUPPRESS


def test_a_disabled_tenant_sends_nothing_whatever_else_holds() -> None:
    running = uuid.uuid4()
    facts = _facts(campaigns={running: CampaignState("running")}, disabled_tenants=frozenset({"acme"}))
    later = _message("transactional").model_copy(update={"send_at": NOON_MADRID + DAY})
    for message in (_message(campaign=running), _message("transactional"), later):
        decision = decide("acme", message, facts, NOON_MADRID)
        assert (decision.verdict, decision.reason_code) == (Verdict.SUPPRESS, "tenant_disabled")
    assert not facts.releases.added  # a suppressed message does not count against caps
    # A campaign cancelled because its tenant was disabled says so, even before the tenant's state is seen.
    stopped = uuid.uuid4()
    facts = _facts(campaigns={stopped: CampaignState("cancelled", cancel_reason="tenant_disabled")})
    assert decide("acme", _message(campaign=stopped), facts, NOON_MADRID).reason_code == "tenant_disabled"
    # Another tenant's messages are not touched.
    assert decide("other", _message("transactional"), facts, NOON_MADRID).verdict is Verdict.RELEASE
    assert decide("other", later, facts, NOON_MADRID).reason_code == "scheduled"


def test_contact_time_zone_feeds_quiet_hours() -> None:
    # The number says New York; the contact says Honolulu, where it is still before 8:00.
    us = "+12125550123"  # New York area code
    at = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)  # 12:30 New York, 07:30 Honolulu
    message = MessageAccepted(
        message_id=uuid.uuid4(), to=us, country="US", body="x", type="marketing", encoding="GSM-7",
        segments=1, source="api", accepted_at=at,
    )
    facts = Facts(policies={"acme": TenantPolicy("opt_out")})
    assert decide("acme", message, facts, at).verdict is Verdict.RELEASE
    in_hawaii = Facts(policies={"acme": TenantPolicy("opt_out")},
                      contacts={("acme", us): Contact(uuid.uuid4(), None, time_zone="Pacific/Honolulu")})
    held = decide("acme", message, in_hawaii, at)
    assert (held.verdict, held.reason_code) == (Verdict.DEFER, "quiet_hours")
    assert held.due_at == datetime(2026, 11, 25, 18, 0, tzinfo=UTC)  # 08:00 in Honolulu


def test_parse_caps_ignores_bad_entries() -> None:
    assert parse_caps([{"max": 1, "window_s": 86400}, {"max": "x"}, {"window_s": 5}, None]) == (Cap(1, DAY),)
