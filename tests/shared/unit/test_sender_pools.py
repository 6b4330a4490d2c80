"""Sender pools and sticky senders (shared/senders.py ``choose_from_pool``), on ingest's accept,
and the dispatcher's per-sender throughput (a bucket per rate-limited sender)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from services.dispatcher.handlers import Job
from services.dispatcher.handlers import Sender as Dispatch
from services.dispatcher.settings import DispatcherSettings, HeraldHttpConfig
from services.dispatcher.throttle import LocalThrottle, sender_key
from services.ingest.domain import Rejection, accept, request_hash
from services.reports.domain import from_accepted
from shared.contracts import MessageAccepted, MessageOutbound, MessageRequest
from shared.phones import SMS_CAPABLE
from shared.senders import (
    NOT_ALLOWED_FOR_COUNTRY,
    NOT_REGISTERED,
    NOT_VERIFIED,
    POOL_EXHAUSTED,
    POOL_NOT_FOUND,
    Pool,
    PoolChoice,
    Refusal,
    Sender,
    SenderBook,
    choose_from_pool,
    geo_rank,
    load_rules,
)

RULES = load_rules()
TEN_DLC = {"ten_dlc": {"brand_id": "B1", "campaign_id": "C1"}}
NJ_201, NJ_973, NY_212 = "+12015550101", "+19735550102", "+12125550103"
ES_A, ES_B = "+34910000001", "+34910000002"


def book(*senders: Sender, pools: tuple[Pool, ...] = ()) -> SenderBook:
    return SenderBook({s.sender: s for s in senders}, {p.name: p for p in pools})


def us(number: str, state: str = "verified") -> Sender:
    return Sender(number, "long_code", state, frozenset({"US"}), registrations=TEN_DLC)


def es(number: str, state: str = "verified") -> Sender:
    return Sender(number, "long_code", state, frozenset({"ES"}))


def choose(b: SenderBook, recipient: str, country: str, sticky: str | None = None, pool: str = "p") -> PoolChoice | Refusal:
    return choose_from_pool(b, pool, recipient, country, RULES, sticky)


def test_a_new_recipient_gets_a_usable_sender_and_keeps_it() -> None:
    b = book(es(ES_A), es(ES_B), pools=(Pool("p", (ES_A, ES_B)),))
    first = choose(b, "+34612345678", "ES")
    assert isinstance(first, PoolChoice) and first.how == "assigned" and first.sender in (ES_A, ES_B)
    again = choose(b, "+34612345678", "ES", sticky=first.sender)
    assert (again.sender, again.how) == (first.sender, "sticky")  # type: ignore[union-attr]
    assert not again.changed and first.changed  # type: ignore[union-attr]
    # the same recipient always gets the same first sender (stable), and recipients spread over the pool
    assert choose(b, "+34612345678", "ES").sender == first.sender  # type: ignore[union-attr]
    picked = {choose(b, f"+3461234{i:04d}", "ES").sender for i in range(40)}  # type: ignore[union-attr]
    assert picked == {ES_A, ES_B}


def test_a_sticky_sender_wins_over_a_better_geographic_match() -> None:
    b = book(us(NJ_201), us(NY_212), pools=(Pool("p", (NJ_201, NY_212), geo_match=True),))
    assert choose(b, "+12125559999", "US", sticky=NJ_201).sender == NJ_201  # type: ignore[union-attr]


def test_geo_match_prefers_the_area_code_then_the_country() -> None:
    b = book(es(ES_A), us(NJ_201), us(NY_212), us(NJ_973),
             pools=(Pool("p", (ES_A, NJ_201, NY_212, NJ_973), geo_match=True),))
    assert choose(b, "+12125559999", "US").sender == NY_212  # type: ignore[union-attr]  # same area code
    assert choose(b, "+19735559999", "US").sender == NJ_973  # type: ignore[union-attr]
    # no sender of the area code: one of the country's (never the Spanish number: not allowed in the US anyway)
    assert choose(b, "+13125559999", "US").sender in (NJ_201, NY_212, NJ_973)  # type: ignore[union-attr]
    assert choose(b, "+34612345678", "ES").sender == ES_A  # type: ignore[union-attr]
    # an alphanumeric id whose countries name the destination matches the country
    alpha = Sender("Acme", "alphanumeric", countries=frozenset({"FR"}))
    assert geo_rank(alpha, "+33612345678", "FR") == 1 and geo_rank(alpha, "+34612345678", "ES") == 0
    assert geo_rank(us(NY_212), "+12125559999", "US") == 2


def test_without_geo_match_pool_order_decides_fallbacks_only() -> None:
    b = book(Sender("Acme", "alphanumeric"), es(ES_A), pools=(Pool("p", ("Acme", ES_A)),))
    picked = {choose(b, f"+3461234{i:04d}", "ES").sender for i in range(40)}  # type: ignore[union-attr]
    assert picked == {"Acme", ES_A}


@pytest.mark.parametrize(("change", "reason"), [
    ("suspended", NOT_VERIFIED),
    ("removed", NOT_REGISTERED),
    ("out_of_pool", "removed_from_pool"),
    ("other_country", NOT_ALLOWED_FOR_COUNTRY),
])
def test_an_unusable_sticky_sender_falls_back_in_pool_order_with_the_reason(change: str, reason: str) -> None:
    third = "+34910000003"
    senders = {ES_A: es(ES_A), ES_B: es(ES_B), third: es(third)}
    members = (ES_A, ES_B, third)
    if change == "suspended":
        senders[ES_B] = es(ES_B, "suspended")
    elif change == "removed":
        del senders[ES_B]
    elif change == "out_of_pool":
        members = (ES_A, third)
    else:
        senders[ES_B] = Sender(ES_B, "long_code", countries=frozenset({"FR"}))
    b = book(*senders.values(), pools=(Pool("p", members),))
    got = choose(b, "+34612345678", "ES", sticky=ES_B)
    assert isinstance(got, PoolChoice)
    assert (got.sender, got.how, got.previous, got.reason) == (ES_A, "fallback", ES_B, reason)
    detail = got.detail()
    assert detail["sender_choice"] == "fallback" and detail["fallback_from"] == ES_B and detail["fallback_reason"] == reason
    assert detail["sender"] == ES_A and detail["sender_pool"] == "p" and detail["fallback_message"]
    # the first in pool order that may send: here the first is suspended too
    b2 = book(es(ES_A, "suspended"), es(third), pools=(Pool("p", (ES_A, ES_B, third)),))
    assert choose(b2, "+34612345678", "ES", sticky=ES_B).sender == third  # type: ignore[union-attr]


def test_fallback_with_geo_match_takes_the_best_match_first() -> None:
    b = book(us(NJ_201), us(NY_212, "suspended"), us(NJ_973),
             pools=(Pool("p", (NJ_201, NY_212, NJ_973), geo_match=True),))
    got = choose(b, "+19735559999", "US", sticky=NY_212)
    assert (got.sender, got.how, got.reason) == (NJ_973, "fallback", NOT_VERIFIED)  # type: ignore[union-attr]


def test_unknown_pool_and_a_pool_that_cannot_send_are_refused() -> None:
    b = book(es(ES_A, "pending"), pools=(Pool("p", (ES_A,)),))
    assert choose(b, "+34612345678", "ES", pool="nope").code == POOL_NOT_FOUND  # type: ignore[union-attr]
    refused = choose(b, "+34612345678", "ES")
    assert isinstance(refused, Refusal) and refused.code == POOL_EXHAUSTED and "pending" in refused.message
    assert choose(book(pools=(Pool("p", ()),)), "+34612345678", "ES").code == POOL_EXHAUSTED  # type: ignore[union-attr]


def test_pools_from_the_key_query_json() -> None:
    b = SenderBook.from_json(f'[{{"sender": "{ES_A}", "kind": "long_code", "state": "verified", "countries": ["ES"],'
                             ' "capabilities": ["sms"], "registrations": {}, "rate_per_s": 20, "burst": null}]',
                             f'[{{"name": "otp", "senders": ["{ES_A}"], "geo_match": true}}]')
    assert b.pools["otp"] == Pool("otp", (ES_A,), True)
    assert b.senders[ES_A].rate_per_s == 20


# --- on ingest's accept and in the timeline --------------------------------------------------------


def _accept(request: MessageRequest, b: SenderBook, sticky: dict | None = None) -> MessageAccepted:
    return accept(request, message_id=uuid.uuid4(), now=datetime.now(UTC), source="api", allowed_types=SMS_CAPABLE,
                  smart_encoding=True, senders=b, sender_rules=RULES, sticky=sticky)


def test_accept_picks_the_pools_sender_and_records_the_choice_for_the_timeline() -> None:
    b = book(es(ES_A), es(ES_B, "suspended"), pools=(Pool("otp", (ES_A, ES_B)),))
    request = MessageRequest(to="+34 612 345 678", body="Your code is 1234", sender_pool="otp")
    m = _accept(request, b)
    assert (m.sender, m.sender_pool, m.sender_choice["sender_choice"]) == (ES_A, "otp", "assigned")
    m = _accept(request, b, sticky={("otp", "+34612345678"): ES_B})
    assert m.sender == ES_A
    assert m.sender_choice == {"sender_pool": "otp", "sender": ES_A, "sender_choice": "fallback", "fallback_from": ES_B,
                               "fallback_reason": NOT_VERIFIED, "fallback_message": m.sender_choice["fallback_message"]}
    timeline = from_accepted(uuid.uuid4(), "acme", m).detail
    assert timeline["fallback_from"] == ES_B and timeline["sender"] == ES_A and timeline["fallback_reason"] == NOT_VERIFIED
    # the fields travel on the event, and are left out of it when there is no pool
    dumped = m.model_dump(mode="json")
    assert dumped["sender_pool"] == "otp" and dumped["sender_choice"]["fallback_from"] == ES_B
    plain = _accept(MessageRequest(to="+34612345678", body="hola", sender=ES_A), b).model_dump(mode="json")
    assert "sender_pool" not in plain and "sender_choice" not in plain and "sender_throttle" not in plain


def test_accept_refuses_an_unknown_or_exhausted_pool_on_sender_pool() -> None:
    b = book(es(ES_A, "suspended"), pools=(Pool("otp", (ES_A,)),))
    for pool, expected in (("nope", POOL_NOT_FOUND), ("otp", POOL_EXHAUSTED)):
        with pytest.raises(Rejection) as refused:
            _accept(MessageRequest(to="+34612345678", body="x", sender_pool=pool), b)
        assert (refused.value.code, refused.value.details[0]["loc"]) == (expected, "sender_pool")


def test_a_request_names_a_sender_or_a_pool_and_old_hashes_do_not_change() -> None:
    with pytest.raises(ValueError, match="sender_pool"):
        MessageRequest(to="+34612345678", body="x", sender="Acme", sender_pool="otp")
    request = MessageRequest(to="+34612345678", body="x")
    assert request_hash(request) == request_hash(MessageRequest.model_validate({"to": "+34612345678", "body": "x"}))
    assert request_hash(request) != request_hash(request.model_copy(update={"sender_pool": "otp"}))


def test_a_rate_limited_sender_carries_its_throttle() -> None:
    b = book(Sender(ES_A, "long_code", rate_per_s=20.0), es(ES_B))
    m = _accept(MessageRequest(to="+34612345678", body="x", sender=ES_A), b)
    assert m.sender_throttle is not None and (m.sender_throttle.kind, m.sender_throttle.rate_per_s) == ("long_code", 20.0)
    assert _accept(MessageRequest(to="+34612345678", body="x", sender=ES_B), b).sender_throttle is None
    # through the event (the scheduler's outbound copy validates it again)
    out = MessageOutbound(**m.model_dump(), released_at=datetime.now(UTC))
    assert out.sender_throttle == m.sender_throttle


# --- the dispatcher: a bucket per rate-limited sender ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)  # others run meanwhile
        self.now += seconds


class Recorder:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str | None]] = []

    async def submit_many(self, messages):  # noqa: ANN001
        from services.dispatcher.gateways.base import Submitted

        self.sent += [(self.clock.now, m.sender) for m in messages]
        return [Submitted(f"g-{m.message_id}") for m in messages]


def _outbound(sender: str | None, rate: float | None) -> MessageOutbound:
    m = _accept(MessageRequest(to="+34612345678", body="x", sender=sender),
                book(Sender(ES_A, "long_code", rate_per_s=rate), Sender(ES_B, "long_code")))
    return MessageOutbound(**m.model_dump(), released_at=datetime.now(UTC))


@pytest.mark.parametrize("priority", [True, False])
async def test_a_senders_rate_holds_its_messages_and_not_the_others(priority: bool) -> None:
    clock = Clock()
    settings = DispatcherSettings(gateways=[HeraldHttpConfig(name="g", url="http://x", api_token=SecretStr("t"),
                                                              rate_per_s=10_000, batch_size=100)])
    gateway = Recorder(clock)
    throttle = LocalThrottle({"g": (10_000.0, None)}, clock)
    dispatch = Dispatch({"g": gateway}, settings, throttle, clock=clock, sleep=clock.sleep)  # type: ignore[dict-item]
    slow = [Job("acme", "t", _outbound(ES_A, 10.0)) for _ in range(30)]
    fast = [Job("acme", "t", _outbound(ES_B, None)) for _ in range(30)]
    finished, unknown = await dispatch.send(slow + fast, priority=priority)
    assert len(finished) == 60 and not unknown
    assert [f.state for _, f in finished] == ["submitted"] * 60
    limited = [t for t, s in gateway.sent if s == ES_A]
    free = [t for t, s in gateway.sent if s == ES_B]
    assert max(free) <= 0.2  # the other sender's messages did not wait for it (2 s)
    # 30 messages at 10/s, 10 at once (one second's worth): the last about 2 s after the first
    assert 1.9 <= max(limited) - min(limited) <= 2.2
    assert sender_key("acme", ES_A) in throttle.buckets
