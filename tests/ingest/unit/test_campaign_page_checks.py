"""A campaign page's messages pass the API's per-message checks (``route``): pure, no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.ingest.audience import segments as seg
from services.ingest.audience.contacts_repo import AudienceMember
from services.ingest.audience.templates import Template
from services.ingest.campaigns.domain import Variant, message_id_for
from services.ingest.campaigns.launcher import Launcher, PageChecks, Plan
from services.ingest.domain import Rejection, route
from shared.geo import GeoPolicy, GeoRules
from shared.senders import Pool, Sender, SenderBook
from shared.statuses import Status

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
T = uuid.uuid4()


def plan(**extra) -> Plan:
    fields = dict(tenant_id="acme", campaign_id=uuid.uuid4(), node=seg.parse('"vip" in tags'),
                  variants=(Variant("A", T, 100),), templates={T: Template("marketing", "en", {"en": "Sale. Reply STOP to opt out"})},
                  sender=None, ab_test=None, phase="test", winner=None, cursor=None)
    return Plan(**{**fields, **extra})  # type: ignore[arg-type]


def member(phone: str, country: str) -> AudienceMember:
    return AudienceMember(uuid.uuid4(), phone, "Ana", None, "en", country, None, {}, True)


SPAIN = [member(f"+3460000000{i}", "ES") for i in range(3)]
FRANCE = [member(f"+3361000000{i}", "FR") for i in range(2)]
launcher = Launcher(None, None)  # type: ignore[arg-type]  # page_events does no I/O


def test_without_checks_every_contact_is_sent_as_before() -> None:
    out = launcher.page_events(plan(), SPAIN + FRANCE, NOW)
    assert len(out.accepted) == 5 and out.refused == []


def test_a_country_outside_the_tenants_geo_permissions_is_refused_with_a_failed_status() -> None:
    p = plan()
    out = launcher.page_events(p, SPAIN + FRANCE, NOW, checks=PageChecks(geo=GeoPolicy.of("ES", None)))
    assert [e.event.payload.to for e in out.accepted] == [m.phone for m in SPAIN]
    refused = [e.event.payload for e in out.refused]
    assert [s.message_id for s in refused] == [message_id_for(p.campaign_id, m.contact_id) for m in FRANCE]
    for s, m in zip(refused, FRANCE, strict=True):
        assert s.status is Status.FAILED and s.reason_code == "destination_not_allowed"
        assert (s.campaign_id, s.variant, s.contact_id) == (p.campaign_id, "A", m.contact_id)
    # published again, a refusal is the same event
    again = launcher.page_events(p, FRANCE, NOW, checks=PageChecks(geo=GeoPolicy.of("ES", None)))
    assert [e.event.event_id for e in again.refused] == [e.event.event_id for e in out.refused]


def test_a_suspended_sender_refuses_every_contact_and_a_verified_one_carries_its_throughput() -> None:
    suspended = SenderBook({"Shop": Sender("Shop", "alphanumeric", "suspended")})
    out = launcher.page_events(plan(sender="Shop"), SPAIN, NOW, checks=PageChecks(senders=suspended))
    assert out.accepted == [] and {e.event.payload.reason_code for e in out.refused} == {"sender_not_verified"}
    rated = SenderBook({"Shop": Sender("Shop", "alphanumeric", rate_per_s=20, burst=5)})
    out = launcher.page_events(plan(sender="Shop"), SPAIN, NOW, checks=PageChecks(senders=rated))
    assert out.refused == [] and {e.event.payload.sender_throttle.rate_per_s for e in out.accepted} == {20}


def test_a_pool_campaign_picks_each_contacts_sender_keeping_the_sticky_one() -> None:
    book = SenderBook({n: Sender(n, "alphanumeric", countries=frozenset({"ES"})) for n in ("ShopA", "ShopB")},
                      {"promo": Pool("promo", ("ShopA", "ShopB"))})
    sticky = {("promo", SPAIN[1].phone): "ShopB"}
    out = launcher.page_events(plan(sender_pool="promo"), SPAIN + FRANCE, NOW, checks=PageChecks(senders=book, sticky=sticky))
    sent = {e.event.payload.to: e.event.payload for e in out.accepted}
    assert sent[SPAIN[0].phone].sender == "ShopA" and sent[SPAIN[1].phone].sender == "ShopB"
    assert sent[SPAIN[1].phone].sender_choice["sender_choice"] == "sticky"
    assert {e.event.payload.reason_code for e in out.refused} == {"sender_pool_exhausted"}  # no sender for France


def test_route_is_the_apis_check() -> None:
    book = SenderBook({"Shop": Sender("Shop", "alphanumeric", countries=frozenset({"ES"}))})
    assert route("+34600000001", "ES", sender="Shop", senders=book, sender_rules=launcher.sender_rules).sender == "Shop"
    for kwargs, code in [
        (dict(geo=GeoPolicy.of("ES", None), geo_rules=GeoRules()), "destination_not_allowed"),
        (dict(senders=book, sender_rules=launcher.sender_rules), "sender_not_allowed_for_country"),
    ]:
        try:
            route("+33610000001", "FR", sender="Shop", **kwargs)  # type: ignore[arg-type]
        except Rejection as rejection:
            assert rejection.code == code
        else:
            raise AssertionError(f"not refused: {kwargs}")


def test_a_named_sender_that_can_send_to_no_one_blocks_the_campaign_a_pool_does_not() -> None:
    from services.ingest.campaigns.launcher import sender_blocked

    suspended = SenderBook({"Shop": Sender("Shop", "alphanumeric", "suspended")}, {"promo": Pool("promo", ("Shop",))})
    assert sender_blocked(plan(sender="Shop"), PageChecks(senders=suspended)).code == "sender_not_verified"  # type: ignore[union-attr]
    templated = plan(templates={T: Template("marketing", "en", {"en": "Sale. Reply STOP to opt out"}, "Shop")})
    assert sender_blocked(templated, PageChecks(senders=suspended)) is not None
    assert sender_blocked(plan(sender="Shop", sender_pool="promo"), PageChecks(senders=suspended)) is None
    assert sender_blocked(plan(), PageChecks(senders=suspended)) is None  # names no sender
    verified = SenderBook({"Shop": Sender("Shop", "alphanumeric", countries=frozenset({"ES"}))})
    assert sender_blocked(plan(sender="Shop"), PageChecks(senders=verified)) is None  # refused for some countries only
