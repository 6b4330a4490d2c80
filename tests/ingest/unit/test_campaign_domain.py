"""Campaign rules without I/O: splits, A/B phases, message ids, states."""

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.audience.contacts_repo import AudienceMember
from services.ingest.audience.templates import Template
from services.ingest.campaigns.domain import (
    AbTest,
    CampaignError,
    Variant,
    assign,
    build_message,
    check_variants,
    message_id_for,
    transition,
)
from shared.statuses import MessageType

CAMPAIGN = uuid.UUID("0c8f3a52-6a1e-4c1b-9d1e-7f3a2b4c5d6e")
T = uuid.uuid4()
NOW = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
CONTACTS = [uuid.uuid4() for _ in range(50_000)]


def test_splits_are_within_one_percent_on_100k_contacts_and_deterministic() -> None:
    variants = [Variant("A", T, 20), Variant("B", T, 30), Variant("C", T, 50)]
    contacts = [uuid.uuid4() for _ in range(100_000)]
    counts = Counter(assign(CAMPAIGN, c, variants, None, "test", None).name for c in contacts)  # type: ignore[union-attr]
    for v in variants:
        assert abs(counts[v.name] / len(contacts) * 100 - v.percent) < 1.0, counts
    again = [assign(CAMPAIGN, c, variants, None, "test", None).name for c in contacts[:1000]]  # type: ignore[union-attr]
    assert again == [assign(CAMPAIGN, c, variants, None, "test", None).name for c in contacts[:1000]]  # type: ignore[union-attr]
    # Another campaign shuffles contacts differently (no contact is always "A").
    other = uuid.uuid4()
    moved = sum(assign(CAMPAIGN, c, variants, None, "test", None) != assign(other, c, variants, None, "test", None)
                for c in contacts[:10_000])
    assert moved > 5_000


def test_ab_test_phases_partition_the_audience() -> None:
    variants = [Variant("A", T, 50), Variant("B", T, 50)]
    ab = AbTest(test_percent=20, metric="click_rate", wait_s=3600, min_sample=100)
    contacts = CONTACTS[:50_000]
    test = [assign(CAMPAIGN, c, variants, ab, "test", None) for c in contacts]
    rest = [assign(CAMPAIGN, c, variants, ab, "winner", "B") for c in contacts]
    assert all((t is None) != (r is None) for t, r in zip(test, rest, strict=True)), "each contact in exactly one phase"
    in_test = sum(t is not None for t in test)
    assert abs(in_test / len(contacts) * 100 - 20) < 1.0
    assert {r.name for r in rest if r is not None} == {"B"}
    split = Counter(t.name for t in test if t is not None)
    assert abs(split["A"] / in_test - 0.5) < 0.02


def test_check_variants_reports_each_problem() -> None:
    assert check_variants([Variant("A", T, 50), Variant("B", T, 50)]) == []
    codes = {p["code"] for p in check_variants([Variant("A", T, 50), Variant("A", T, 40.123)])}
    assert codes == {"duplicate_variant", "invalid_percent", "split_not_100"}


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        ("draft", "launch", "running"),
        ("running", "pause", "paused"),
        ("completed", "pause", "paused"),
        ("testing", "pause", "paused"),
        ("paused", "cancel", "cancelled"),
        ("running", "cancel", "cancelled"),
    ],
)
def test_transitions(state: str, action: str, expected: str) -> None:
    assert transition(state, action, send_at=None, now=NOW, paused_from=None) == expected  # type: ignore[arg-type]


def test_launch_with_send_at_waits_and_resume_returns_to_the_paused_state() -> None:
    assert transition("draft", "launch", send_at=NOW + timedelta(hours=1), now=NOW, paused_from=None) == "scheduled"
    assert transition("paused", "resume", send_at=None, now=NOW, paused_from="testing") == "testing"
    for state, action in [("running", "launch"), ("cancelled", "resume"), ("cancelled", "pause"), ("draft", "pause")]:
        with pytest.raises(CampaignError) as err:
            transition(state, action, send_at=None, now=NOW, paused_from=None)  # type: ignore[arg-type]
        assert err.value.status == 409 and err.value.code == "invalid_state"


def test_message_is_rendered_for_the_contact_with_a_stable_id() -> None:
    member = AudienceMember(uuid.uuid4(), "+34600123456", "Ana", None, "es", "ES", None, {}, True)
    template = Template("marketing", "en", {"en": "Hi {{first_name|there}}, 20% off", "es": "Hola {{first_name|}}, 20% dto"})
    message = build_message(campaign_id=CAMPAIGN, member=member, variant=Variant("A", T, 100), template=template,
                            region="ES", sender="Shop", now=NOW, smart_encoding=True)
    assert message.body.startswith("Hola Ana, 20% dto") and "BAJA" in message.body  # opt-out line in Spanish
    assert message.type is MessageType.MARKETING and message.source == "campaign"
    assert (message.campaign_id, message.contact_id, message.variant) == (CAMPAIGN, member.contact_id, "A")
    assert message.message_id == message_id_for(CAMPAIGN, member.contact_id)
    assert message.segments == 1 and message.encoding == "GSM-7"


def test_failed_attempts_back_off_and_give_up() -> None:
    from datetime import UTC, datetime, timedelta

    from services.ingest.campaigns.domain import next_attempt_at

    now = datetime(2026, 1, 1, tzinfo=UTC)
    delays = [next_attempt_at(n, now, max_attempts=5, base_s=10, max_s=60) for n in range(5)]
    assert delays[:4] == [now + timedelta(seconds=s) for s in (10, 20, 40, 60)]
    assert delays[4] is None  # the fifth failure is the last
    assert next_attempt_at(0, now, max_attempts=1, base_s=10, max_s=60) is None
