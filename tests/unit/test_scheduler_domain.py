import uuid

from services.scheduler.domain import Facts, Verdict, decide
from shared.contracts import MessageAccepted, utcnow


def _message(kind: str, to: str = "+34600000001") -> MessageAccepted:
    return MessageAccepted(
        message_id=uuid.uuid4(), to=to, country="ES", body="x", type=kind, encoding="GSM-7",
        segments=1, source="api", accepted_at=utcnow(),
    )


FACTS = Facts(suppressions={("acme", "+34600000001"): "opt_out"})


def test_marketing_to_suppressed_number_is_suppressed_with_reason() -> None:
    decision = decide("acme", _message("marketing"), FACTS, utcnow())
    assert decision.verdict is Verdict.SUPPRESS
    assert decision.reason_code == "suppressed" and "opt_out" in (decision.reason or "")


def test_transactional_is_not_blocked_by_marketing_opt_out() -> None:
    assert decide("acme", _message("transactional"), FACTS, utcnow()).verdict is Verdict.RELEASE


def test_suppression_is_per_tenant() -> None:
    assert decide("other", _message("marketing"), FACTS, utcnow()).verdict is Verdict.RELEASE
    assert decide("acme", _message("marketing", "+34600000002"), FACTS, utcnow()).verdict is Verdict.RELEASE
