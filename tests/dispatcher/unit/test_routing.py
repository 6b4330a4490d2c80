
import pytest

from services.dispatcher.domain.health import GatewayHealth, State, Thresholds
from services.dispatcher.domain.routing import Route, Router
from shared.contracts import MessageOutbound, utcnow
from tests import factories


def message(to: str = "+34600000001", country: str = "ES", kind: str = "transactional") -> MessageOutbound:
    return factories.outbound(to=to, country=country, type=kind, accepted_at=utcnow(), released_at=utcnow())


ROUTER = Router(
    [
        Route("es-otp", ("b", "a"), countries=frozenset({"ES"}), types=frozenset({"transactional"})),
        Route("movistar", ("c",), prefixes=("+3461",)),
    ],
    ("a", "b", "c"),
)


def up(_: str) -> bool:
    return True


def test_first_matching_route_wins() -> None:
    assert ROUTER.choose(message(), up).route == "es-otp"
    assert ROUTER.choose(message(), up).gateway == "b"
    assert ROUTER.choose(message("+34610000001", kind="marketing"), up).gateway == "c"
    assert ROUTER.choose(message("+33612345678", "FR"), up).route == "default"


def test_failover_skips_unhealthy_and_just_failed_gateways() -> None:
    choice = ROUTER.choose(message(), lambda g: g != "b")
    assert (choice.gateway, choice.skipped, choice.detail()) == ("a", ("b",), {"route": "es-otp", "failover_from": "b"})
    assert ROUTER.choose(message(), up, avoid=frozenset({"b"})).gateway == "a"


def test_nothing_healthy_still_tries_rather_than_holds() -> None:
    assert ROUTER.choose(message(), lambda g: False).gateway == "b"
    assert ROUTER.choose(message(), lambda g: False, avoid=frozenset({"b"})).gateway == "a"


def test_unknown_gateway_in_route_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown gateways"):
        Router([Route("x", ("zz",))], ("a",))


def test_breaker_opens_on_error_rate_and_recovers_after_cooldown() -> None:
    health = GatewayHealth(Thresholds(min_samples=4, error_rate=0.5, cooldown_s=10))
    health.record(0, True, count=2)
    assert health.record(1, False, count=2) is State.OPEN
    assert not health.available(5)
    assert health.available(11) and health.state is State.HALF_OPEN
    assert health.record(11, False) is State.OPEN  # still bad: another cooldown
    assert health.available(22)
    assert health.record(22, True) is State.CLOSED


def test_slow_answers_count_as_bad() -> None:
    health = GatewayHealth(Thresholds(min_samples=3, slow_s=2))
    health.record(0, True, latency_s=5, count=3)
    assert health.state is State.OPEN
    assert "slow" in health.reason


def test_old_samples_leave_the_window() -> None:
    health = GatewayHealth(Thresholds(min_samples=3, window_s=10))
    health.record(0, False, count=2)
    health.record(20, True, count=2)
    assert health.state is State.CLOSED
