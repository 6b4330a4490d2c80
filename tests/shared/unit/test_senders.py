"""The sender registry's check and the per-country rules (shared/senders.py, shared/sender_rules.yaml)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest

from services.ingest.domain import Rejection, accept
from shared.contracts import MessageRequest
from shared.phones import SMS_CAPABLE
from shared.senders import (
    CARRIER_IDS,
    NOT_ALLOWED_FOR_COUNTRY,
    NOT_REGISTERED,
    NOT_VERIFIED,
    REGISTRATION_MISSING,
    RulesError,
    Sender,
    SenderBook,
    carrier_ids,
    check,
    check_named,
    check_registrations,
    infer_kind,
    load_rules,
    normalise,
    parse_rules,
)

RULES = load_rules()
TEN_DLC = {"ten_dlc": {"brand_id": "B123", "campaign_id": "C456"}}


def book(*senders: Sender) -> SenderBook:
    return SenderBook({s.sender: s for s in senders})


def code(b: SenderBook, sender: str, destination: str) -> str | None:
    refused = check(b, sender, destination, RULES)
    return None if refused is None else refused.code


# --- the data ------------------------------------------------------------------------------------


def test_every_rule_has_sources_and_last_checked() -> None:
    for rule in [RULES.default, *RULES.countries.values()]:
        assert rule.sources, rule.country
        assert all(s["citation"] and s["url"].startswith("https://") for s in rule.sources), rule.country
        assert isinstance(rule.last_checked, date), rule.country


def test_known_countries() -> None:
    assert RULES.rule("ES").alphanumeric == "allowed"
    assert RULES.rule("US").alphanumeric == "not_supported"
    assert RULES.rule("US").local_number_required
    assert RULES.rule("US").registrations["long_code"] == "ten_dlc"
    assert RULES.rule("US").registrations["toll_free"] == "toll_free_verification"
    assert RULES.rule("IN").registrations["alphanumeric"] == "dlt"
    assert RULES.rule("ZZ") is RULES.default


@pytest.mark.parametrize("broken", [
    "version: 1\ndefault: {alphanumeric: allowed, last_checked: 2026-01-01}\n",  # no sources
    "version: 1\ndefault: {alphanumeric: allowed, sources: [{citation: x, url: 'https://x'}]}\n",  # no last_checked
    "version: 1\ndefault: {alphanumeric: maybe, sources: [{citation: x, url: 'https://x'}], last_checked: 2026-01-01}\n",
    ("version: 1\ndefault: {sources: [{citation: x, url: 'https://x'}], last_checked: 2026-01-01}\n"
     "countries: {US: {registrations: {long_code: passport}, sources: [{citation: x, url: 'https://x'}], last_checked: 2026-01-01}}\n"),
    ("version: 1\ndefault: {sources: [{citation: x, url: 'https://x'}], last_checked: 2026-01-01}\n"
     "countries: {XX: {sources: [{citation: x, url: 'https://x'}], last_checked: 2026-01-01}}\n"),
])
def test_broken_rules_are_refused(broken: str) -> None:
    with pytest.raises(RulesError):
        parse_rules(broken)


# --- the check -----------------------------------------------------------------------------------


def test_unregistered_and_another_tenants_sender_are_refused() -> None:
    ours = book(Sender("Acme", "alphanumeric"))
    assert code(ours, "Acme", "ES") is None
    assert code(ours, "Globex", "ES") == NOT_REGISTERED  # another tenant's: not in this tenant's book
    assert code(SenderBook(), "Acme", "ES") == NOT_REGISTERED


def test_pending_suspended_and_reply_only_senders_are_refused() -> None:
    b = book(Sender("Pend", "alphanumeric", "pending"), Sender("Susp", "alphanumeric", "suspended"),
             Sender("+34911234567", "long_code", capabilities=frozenset({"mo"})))
    assert code(b, "Pend", "ES") == NOT_VERIFIED
    assert code(b, "Susp", "ES") == NOT_VERIFIED
    assert code(b, "+34911234567", "ES") == NOT_VERIFIED
    assert "suspended" in check(b, "Susp", "ES", RULES).message  # type: ignore[union-attr]


def test_sender_countries_limit_destinations() -> None:
    b = book(Sender("Acme", "alphanumeric", countries=frozenset({"ES", "FR"})))
    assert code(b, "Acme", "FR") is None
    assert code(b, "Acme", "DE") == NOT_ALLOWED_FOR_COUNTRY


def test_alphanumeric_by_country() -> None:
    b = book(Sender("Acme", "alphanumeric"))
    assert code(b, "Acme", "ES") is None
    assert code(b, "Acme", "US") == NOT_ALLOWED_FOR_COUNTRY
    assert "not supported in US" in check(b, "Acme", "US", RULES).message  # type: ignore[union-attr]
    assert code(b, "Acme", "IN") == REGISTRATION_MISSING  # DLT header registration
    dlt = book(Sender("Acme", "alphanumeric", registrations={"dlt": {"entity_id": "1101"}}))
    assert code(dlt, "Acme", "IN") is None


def test_us_long_code_needs_local_number_and_ten_dlc() -> None:
    us = "+12015550123"
    assert code(book(Sender(us, "long_code")), us, "US") == REGISTRATION_MISSING
    assert code(book(Sender(us, "long_code", registrations={"ten_dlc": {"brand_id": "B1"}})), us, "US") == REGISTRATION_MISSING
    assert code(book(Sender(us, "long_code", registrations=TEN_DLC)), us, "US") is None
    spanish = "+34911234567"
    assert code(book(Sender(spanish, "long_code", registrations=TEN_DLC)), spanish, "US") == NOT_ALLOWED_FOR_COUNTRY
    assert code(book(Sender(spanish, "long_code")), spanish, "ES") is None  # no rule against it in Spain


def test_short_code_needs_its_countries() -> None:
    assert code(book(Sender("12345", "short_code")), "12345", "ES") == NOT_ALLOWED_FOR_COUNTRY
    assert code(book(Sender("12345", "short_code", countries=frozenset({"ES"}))), "12345", "ES") is None


def test_numbers_match_with_or_without_plus() -> None:
    b = book(Sender("+34911234567", "long_code"))
    assert code(b, "34911234567", "ES") is None
    assert normalise("34911234567") == "+34911234567"
    assert normalise("12345") == "12345"
    assert normalise("Acme") == "Acme"


def test_infer_kind() -> None:
    assert infer_kind("Acme") == "alphanumeric"
    assert infer_kind("12345") == "short_code"
    assert infer_kind("+34911234567") == "long_code"
    assert infer_kind("+18005550123") == "toll_free"


def test_check_named() -> None:
    b = book(Sender("Acme", "alphanumeric"), Sender("Pend", "alphanumeric", "pending"))
    assert check_named(b, "Acme") is None
    assert check_named(b, "Pend").code == NOT_VERIFIED  # type: ignore[union-attr]
    assert check_named(b, "Nope").code == NOT_REGISTERED  # type: ignore[union-attr]


def test_registrations_are_checked() -> None:
    assert check_registrations(TEN_DLC) == TEN_DLC
    with pytest.raises(ValueError):
        check_registrations({"passport": {"id": "1"}})
    with pytest.raises(ValueError):
        check_registrations({"ten_dlc": {"brand": "B"}})


def test_book_from_the_key_query_json() -> None:
    b = SenderBook.from_json('[{"sender": "Acme", "kind": "alphanumeric", "state": "verified", "countries": null,'
                             ' "capabilities": ["sms"], "registrations": {}}]')
    assert code(b, "Acme", "ES") is None
    assert SenderBook.from_json(None).senders == {}


# --- in ingest's accept --------------------------------------------------------------------------


def test_accept_refuses_with_the_reason_on_sender() -> None:
    request = MessageRequest(to="+34612345678", body="hola", sender="Globex")
    with pytest.raises(Rejection) as refused:
        accept(request, message_id=uuid.uuid4(), now=datetime.now(UTC), source="api", allowed_types=SMS_CAPABLE,
               smart_encoding=True, senders=book(Sender("Acme", "alphanumeric")), sender_rules=RULES)
    assert refused.value.code == NOT_REGISTERED
    assert refused.value.details[0]["loc"] == "sender"
    ok = accept(request.model_copy(update={"sender": "Acme"}), message_id=uuid.uuid4(), now=datetime.now(UTC),
                source="api", allowed_types=SMS_CAPABLE, smart_encoding=True,
                senders=book(Sender("Acme", "alphanumeric")), sender_rules=RULES)
    assert ok.sender == "Acme"
    # no sender: the gateway's default, nothing to check
    accept(request.model_copy(update={"sender": None}), message_id=uuid.uuid4(), now=datetime.now(UTC), source="api",
           allowed_types=SMS_CAPABLE, smart_encoding=True, senders=SenderBook(), sender_rules=RULES)


def test_carrier_ids_are_those_the_destination_requires() -> None:
    us = "+12015550123"
    b = book(Sender(us, "long_code", registrations=TEN_DLC),
             Sender("Acme", "alphanumeric", registrations={"dlt": {"entity_id": "1101"}}),
             Sender("+18005550123", "toll_free", registrations={"toll_free_verification": {"verification_id": "TF9"}}))
    assert carrier_ids(b, us, "US", RULES) == {"ten_dlc_brand_id": "B123", "ten_dlc_campaign_id": "C456"}
    assert carrier_ids(b, "Acme", "IN", RULES) == {"dlt_entity_id": "1101"}
    assert carrier_ids(b, "Acme", "ES", RULES) == {}  # Spain requires none: nothing is sent
    assert carrier_ids(b, "+18005550123", "US", RULES) == {"toll_free_verification_id": "TF9"}
    assert set(carrier_ids(b, us, "US", RULES)) <= set(CARRIER_IDS)


def test_accept_carries_the_ids_on_the_message() -> None:
    b = book(Sender("Acme", "alphanumeric", registrations={"dlt": {"entity_id": "1101"}}))
    m = accept(MessageRequest(to="+919812345678", body="Your OTP is 1234", sender="Acme"), message_id=uuid.uuid4(),
               now=datetime.now(UTC), source="api", allowed_types=SMS_CAPABLE, smart_encoding=True, senders=b,
               sender_rules=RULES)
    assert m.carrier_ids == {"dlt_entity_id": "1101"}
    assert "carrier_ids" in m.model_dump(mode="json")
    plain = accept(MessageRequest(to="+34612345678", body="hola", sender="Acme"), message_id=uuid.uuid4(),
                   now=datetime.now(UTC), source="api", allowed_types=SMS_CAPABLE, smart_encoding=True, senders=b,
                   sender_rules=RULES)
    assert "carrier_ids" not in plain.model_dump(mode="json")  # left out of the event when empty


def test_smpp_registration_tlvs_are_checked() -> None:
    from pydantic import ValidationError

    from services.dispatcher.gateways.smpp import SmppConfig

    SmppConfig(name="s", host="h", system_id="x", registration_tlvs={"dlt_entity_id": 0x1401})
    with pytest.raises(ValidationError):
        SmppConfig(name="s", host="h", system_id="x", registration_tlvs={"dlt_entity_id": 0x1400})  # Herald's own id
    with pytest.raises(ValidationError):
        SmppConfig(name="s", host="h", system_id="x", registration_tlvs={"passport": 0x1402})
