"""Parking decisions (pure) and the Sender's give-up branch handing refused jobs to a parker."""

import random
from datetime import datetime, timedelta, timezone

from pydantic import SecretStr

from services.dispatcher.domain.parking import MAX_AGE_CODE, ParkingPolicy, deadline, end_at, on_refusal, woken
from services.dispatcher.gateways.base import Outcome, Refused
from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.handlers import Job, Sender
from services.dispatcher.parking import Parker, policy_from
from services.dispatcher.repository import ParkItem
from services.dispatcher.settings import DispatcherSettings
from shared.contracts import MessageOutbound
from tests import factories

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
POLICY = ParkingPolicy(max_age_s={"transactional": 3600, "marketing": 600}, tenant_max_age_s={"slow": 60},
                       retry_base_s=10, retry_cap_s=100)


def message(kind: str = "transactional", expires_in: float | None = None, released: datetime = T0) -> MessageOutbound:
    return factories.outbound(type=kind, accepted_at=released - timedelta(days=2), released_at=released,
                              expires_at=released + timedelta(seconds=expires_in) if expires_in is not None else None)


def test_the_deadline_is_the_max_age_of_the_type_or_tenant_from_release_or_the_validity() -> None:
    assert deadline(POLICY, "acme", message()) == T0 + timedelta(hours=1)  # from release, not acceptance
    assert deadline(POLICY, "acme", message("marketing")) == T0 + timedelta(minutes=10)
    assert deadline(POLICY, "slow", message()) == T0 + timedelta(minutes=1)
    assert deadline(POLICY, "acme", message(expires_in=120)) == T0 + timedelta(minutes=2)
    off = ParkingPolicy(max_age_s={"transactional": 0, "marketing": 600})
    assert deadline(off, "acme", message()) is None


def test_a_refusal_parks_with_a_growing_capped_backoff_before_the_deadline() -> None:
    rng = random.Random(1)
    m = message()
    now = T0 + timedelta(seconds=5)
    waits = [(on_refusal(POLICY, "acme", m, r, now, rng).retry_at - now).total_seconds() for r in range(8)]
    assert 5 <= waits[0] <= 10 and all(w <= 100 for w in waits) and max(waits) >= 50
    near = on_refusal(POLICY, "acme", m, 7, T0 + timedelta(seconds=3599), rng)
    assert near is not None and near.retry_at == T0 + timedelta(hours=1)  # never waits past the deadline
    assert on_refusal(POLICY, "acme", m, 0, T0 + timedelta(hours=1)) is None  # too old: fails as before
    assert on_refusal(ParkingPolicy(max_age_s={}), "acme", m, 0, now) is None  # parking off


def test_a_parked_message_ends_expired_at_its_validity_or_failed_at_its_max_age() -> None:
    m = message(expires_in=120)
    assert end_at(POLICY, "acme", m, T0 + timedelta(seconds=119)) is None
    assert end_at(POLICY, "acme", m, T0 + timedelta(seconds=120)).state == "expired"
    old = end_at(POLICY, "acme", message(), T0 + timedelta(hours=1))
    assert old is not None and (old.state, old.reason_code) == ("failed", MAX_AGE_CODE)
    assert end_at(POLICY, "acme", message(), T0 + timedelta(minutes=59)) is None


def test_gateways_that_closed_again_wake_their_parked_messages() -> None:
    assert woken({"a": "open", "b": "half_open", "c": "closed"}, {"a": "closed", "b": "closed", "c": "closed"}) == {"a", "b"}
    assert woken({}, {"a": "closed"}) == set()
    assert woken({"a": "closed"}, {"a": "open"}) == set()


def test_settings_give_the_policy() -> None:
    s = DispatcherSettings(parking_tenant_max_age_s={"t1": 30})
    p = policy_from(s)
    assert p.max_age_s == {"transactional": 6 * 3600, "marketing": 2 * 3600} and p.tenant_max_age_s == {"t1": 30}


class Refusing:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        self.calls += 1
        return [Refused("connection_error", "refused", True)] * len(messages)


class Recording:
    def __init__(self) -> None:
        self.parked: list[ParkItem] = []

    async def park(self, owner: str, items: list[ParkItem]) -> int:
        assert owner == "me"
        self.parked += items
        return len(items)


def sender(parker: Parker | None) -> Sender:
    gw = [HeraldHttpConfig(name="a", url="http://x", api_token=SecretStr("t"), rate_per_s=10_000)]
    settings = DispatcherSettings(gateways=gw, retry_base_s=0.01, retry_cap_s=0.02, retry_max_attempts=3)
    return Sender({"a": Refusing("a")}, settings, parker=parker)  # type: ignore[dict-item]


async def test_refusals_past_the_budget_are_parked_not_failed() -> None:
    repo = Recording()
    s = sender(Parker(repo, POLICY, "me"))  # type: ignore[arg-type]
    now_released = datetime.now(timezone.utc)
    jobs = [Job("acme", "t", message(released=now_released)) for _ in range(3)]
    finished, unknown = await s.send(jobs)
    assert finished == [] and unknown == []
    assert sorted(p.message_id for p in repo.parked) == sorted(j.message.message_id for j in jobs)
    assert all(p.attempts == 3 and p.gateway == "a" and "connection_error" in (p.reason or "") for p in repo.parked)


async def test_without_a_parker_or_past_the_deadline_refusals_fail_as_before() -> None:
    finished, _ = await sender(None).send([Job("acme", "t", message(released=datetime.now(timezone.utc)))])
    assert [(f.state, f.reason_code) for _, f in finished] == [("failed", "retries_exhausted")]
    repo = Recording()
    too_old = message(released=datetime.now(timezone.utc) - timedelta(hours=2))
    finished, _ = await sender(Parker(repo, POLICY, "me")).send([Job("acme", "t", too_old)])  # type: ignore[arg-type]
    assert [(f.state, f.reason_code) for _, f in finished] == [("failed", "retries_exhausted")] and repo.parked == []


async def test_one_shot_tries_once_then_parks_and_shares_health() -> None:
    repo = Recording()
    s = sender(Parker(repo, POLICY, "me"))  # type: ignore[arg-type]
    once = s.one_shot()
    assert once.health is s.health and s.settings.retry_max_attempts == 3
    await once.send([Job("acme", "t", message(released=datetime.now(timezone.utc)), attempts=3)])
    assert s.gateways["a"].calls == 1 and [p.attempts for p in repo.parked] == [4]  # type: ignore[attr-defined]
