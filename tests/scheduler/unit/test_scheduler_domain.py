from datetime import UTC, datetime, timedelta

from services.scheduler.domain import Facts, TenantPolicy, Verdict, decide
from shared.contracts import MessageAccepted, utcnow
from tests import factories

NOON_MADRID = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # a Wednesday, 12:00 in Spain


def _message(kind: str, to: str = "+34600000001") -> MessageAccepted:
    return factories.accepted(to=to, type=kind, accepted_at=utcnow())


# These tenants send marketing to numbers that are not contacts ('opt_out' consent mode).
OPT_OUT = TenantPolicy(marketing_consent="opt_out")
FACTS = Facts(suppressions={("acme", "+34600000001"): "opt_out"}, policies={"acme": OPT_OUT, "other": OPT_OUT})


def test_marketing_to_suppressed_number_is_suppressed_with_reason() -> None:
    decision = decide("acme", _message("marketing"), FACTS, NOON_MADRID)
    assert decision.verdict is Verdict.SUPPRESS
    assert decision.reason_code == "suppressed" and "opt_out" in (decision.reason or "")


def test_transactional_is_not_blocked_by_marketing_opt_out() -> None:
    assert decide("acme", _message("transactional"), FACTS, NOON_MADRID).verdict is Verdict.RELEASE


def test_suppression_is_per_tenant() -> None:
    assert decide("other", _message("marketing"), FACTS, NOON_MADRID).verdict is Verdict.RELEASE
    assert decide("acme", _message("marketing", "+34600000002"), FACTS, NOON_MADRID).verdict is Verdict.RELEASE


def test_marketing_in_quiet_hours_is_deferred_to_the_morning() -> None:
    night = datetime(2026, 11, 25, 22, 30, tzinfo=UTC)  # 23:30 in Madrid
    decision = decide("other", _message("marketing", "+34600000002"), FACTS, night)
    assert decision.verdict is Verdict.DEFER and decision.reason_code == "quiet_hours"
    # A Spanish mobile may be in Madrid or the Canaries: 9:00 in both is 9:00 UTC.
    assert decision.due_at == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert decision.detail["quiet_hours"] == "deferred"
    assert decide("other", _message("transactional", "+34600000002"), FACTS, night).verdict is Verdict.RELEASE


def test_suppression_wins_over_timing() -> None:
    night = datetime(2026, 11, 25, 22, 30, tzinfo=UTC)
    assert decide("acme", _message("marketing"), FACTS, night).verdict is Verdict.SUPPRESS


def test_send_at_holds_then_quiet_hours_judge_the_release_time() -> None:
    m = _message("marketing", "+34600000002").model_copy(update={"send_at": NOON_MADRID + timedelta(hours=10)})
    held = decide("other", m, FACTS, NOON_MADRID)
    assert (held.verdict, held.reason_code, held.due_at) == (Verdict.DEFER, "scheduled", m.send_at)
    at_due = decide("other", m, FACTS, m.send_at)  # 22:00 in Madrid: quiet hours now
    assert (at_due.verdict, at_due.reason_code) == (Verdict.DEFER, "quiet_hours")
    assert decide("other", m, FACTS, datetime(2026, 11, 26, 9, 0, tzinfo=UTC)).verdict is Verdict.RELEASE


def test_a_clients_command_suppresses_or_holds_again() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from services.scheduler.domain import CANCELLED_BY_CLIENT, Verdict, command_decision

    cancel = command_decision("cancel", None)
    assert (cancel.verdict, cancel.reason_code) == (Verdict.SUPPRESS, CANCELLED_BY_CLIENT)
    local = datetime(2026, 12, 7, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    move = command_decision("reschedule", local)
    assert (move.verdict, move.reason_code, move.due_at) == (Verdict.DEFER, "scheduled", datetime(2026, 12, 7, 9, 0, tzinfo=UTC))
    assert move.detail == {"send_at": "2026-12-07T09:00:00+00:00", "rescheduled": "true"}
