"""Sender registry and per-country sender rules: who may send as whom, to where. Pure logic, no I/O.

A tenant's senders (table ``senders``, migration 0037) are numbers (long codes, toll-free, short
codes) and alphanumeric sender ids, each with the destination countries it may send to (None:
any the country rules allow), its capabilities (``sms``: it sends; ``mo``: replies to it reach
the tenant) and a state (``pending`` until an operator verifies it, ``verified``, ``suspended``).
A message may name as ``sender`` only one of its tenant's verified senders, allowed for the
destination by the sender's countries and by the destination country's rules
(``sender_rules.yaml``): whether alphanumeric ids are accepted there, whether a number must be
local, and which registration (10DLC, toll-free verification, DLT) a kind of sender needs.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any, Literal

import phonenumbers
import yaml

Kind = Literal["long_code", "toll_free", "short_code", "alphanumeric"]
State = Literal["pending", "verified", "suspended"]
KINDS: tuple[str, ...] = ("long_code", "toll_free", "short_code", "alphanumeric")
STATES: tuple[str, ...] = ("pending", "verified", "suspended")
CAPABILITIES: tuple[str, ...] = ("sms", "mo")
REGISTRATIONS: dict[str, tuple[str, ...]] = {
    # registration -> the fields a sender's record of it must have
    "ten_dlc": ("brand_id", "campaign_id"),
    "toll_free_verification": ("verification_id",),
    "dlt": ("entity_id",),
}

#: The carrier ids a message may carry (``carrier_ids``), as SMPP gateways' registration_tlvs name them.
CARRIER_IDS = ("ten_dlc_brand_id", "ten_dlc_campaign_id", "toll_free_verification_id", "dlt_entity_id", "dlt_template_id")

NOT_REGISTERED = "sender_not_registered"
NOT_VERIFIED = "sender_not_verified"
NOT_ALLOWED_FOR_COUNTRY = "sender_not_allowed_for_country"
REGISTRATION_MISSING = "sender_registration_missing"

SENDER_RE = re.compile(r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$")
_SHORT_CODE = re.compile(r"^[0-9]{3,8}$")


def normalise(sender: str) -> str:
    """The registry's form of a sender: numbers as ``+E.164`` (``34911234567`` and
    ``+34911234567`` are one number), short codes as digits, ids as written."""
    text = sender.strip()
    digits = text[1:] if text.startswith("+") else text
    if digits.isdigit() and (text.startswith("+") or not _SHORT_CODE.match(text)):
        try:
            parsed = phonenumbers.parse("+" + digits, None)
        except phonenumbers.NumberParseException:
            return text
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return text


def infer_kind(sender: str) -> Kind:
    """What a sender is, from its form: an id has a letter; 3 to 8 digits are a short code; a
    number is toll-free when its numbering plan says so, else a long code."""
    text = normalise(sender)
    if _SHORT_CODE.match(text):
        return "short_code"
    if not text.startswith("+"):
        return "alphanumeric"
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return "long_code"
    return "toll_free" if phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.TOLL_FREE else "long_code"


def number_country(sender: str) -> str | None:
    """The country of a ``+E.164`` sender (None for ids and short codes, or when unknown)."""
    if not sender.startswith("+"):
        return None
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(sender, None)) or None
    except phonenumbers.NumberParseException:
        return None


@dataclass(frozen=True, slots=True)
class Sender:
    sender: str
    kind: str
    state: str = "verified"
    countries: frozenset[str] | None = None  # None: any the country rules allow
    capabilities: frozenset[str] = frozenset({"sms"})
    registrations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Sender:
        registrations = row.get("registrations") or {}
        if isinstance(registrations, str):
            registrations = json.loads(registrations)
        countries = row.get("countries")
        return cls(row["sender"], row["kind"], row["state"], frozenset(countries) if countries is not None else None,
                   frozenset(row.get("capabilities") or ("sms",)), registrations)


@dataclass(frozen=True, slots=True)
class SenderBook:
    """One tenant's senders, by their registry form."""

    senders: Mapping[str, Sender] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> SenderBook:
        return cls({s.sender: s for s in (Sender.of(r) for r in rows)})

    @classmethod
    def from_json(cls, text: str | list[Any] | None) -> SenderBook:
        """From the JSON array the key query aggregates (shared/auth.py)."""
        rows = json.loads(text) if isinstance(text, str) else (text or [])
        return cls.of(rows)

    def get(self, sender: str) -> Sender | None:
        return self.senders.get(normalise(sender))


@dataclass(frozen=True, slots=True)
class CountryRule:
    country: str
    alphanumeric: str = "allowed"  # allowed | replaced | not_supported
    local_number_required: bool = False
    registrations: Mapping[str, str] = field(default_factory=dict)  # sender kind -> registration
    sources: tuple[Mapping[str, str], ...] = ()
    last_checked: date | None = None


@dataclass(frozen=True, slots=True)
class SenderRules:
    default: CountryRule
    countries: Mapping[str, CountryRule]

    def rule(self, country: str) -> CountryRule:
        return self.countries.get(country, self.default)


class RulesError(ValueError):
    pass


def _rule(country: str, data: Mapping[str, Any]) -> CountryRule:
    if not isinstance(data, Mapping):
        raise RulesError(f"{country}: a rule is a mapping")
    alnum = data.get("alphanumeric", "allowed")
    if alnum not in ("allowed", "replaced", "not_supported"):
        raise RulesError(f"{country}: alphanumeric is allowed, replaced or not_supported, not {alnum!r}")
    registrations = dict(data.get("registrations") or {})
    for kind, registration in registrations.items():
        if kind not in KINDS or registration not in REGISTRATIONS:
            raise RulesError(f"{country}: registrations maps a sender kind {KINDS} to one of {tuple(REGISTRATIONS)}")
    sources = tuple(data.get("sources") or ())
    if not sources or not all(isinstance(s, Mapping) and s.get("citation") and s.get("url") for s in sources):
        raise RulesError(f"{country}: every rule needs sources, each with a citation and a url")
    checked = data.get("last_checked")
    if not isinstance(checked, date):
        raise RulesError(f"{country}: last_checked is a date (YYYY-MM-DD)")
    return CountryRule(country, alnum, bool(data.get("local_number_required", False)), registrations, sources, checked)


def parse_rules(text: str) -> SenderRules:
    data = yaml.safe_load(text)
    if not isinstance(data, Mapping) or data.get("version") != 1:
        raise RulesError("sender rules: version 1 expected")
    countries = {c: _rule(c, r) for c, r in (data.get("countries") or {}).items()}
    for c in countries:
        if c not in phonenumbers.SUPPORTED_REGIONS:
            raise RulesError(f"{c}: not an ISO 3166-1 alpha-2 country with phone numbers")
    return SenderRules(_rule("default", data.get("default") or {}), countries)


@lru_cache(maxsize=1)
def load_rules() -> SenderRules:
    """The packaged ``sender_rules.yaml`` (read once per process)."""
    return parse_rules(importlib.resources.files("shared").joinpath("sender_rules.yaml").read_text("utf-8"))


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str


def missing_registration(sender: Sender, registration: str) -> bool:
    record = sender.registrations.get(registration) or {}
    return not all(record.get(f) for f in REGISTRATIONS[registration])


def check(book: SenderBook, sender: str, destination: str, rules: SenderRules) -> Refusal | None:
    """Why a message from ``sender`` to ``destination`` (alpha-2) is refused; None: allowed."""
    found = book.get(sender)
    if found is None:
        return Refusal(NOT_REGISTERED, f"sender {sender!r} is not one of this tenant's registered senders "
                                       "(request it with POST /v1/senders)")
    if found.state != "verified":
        return Refusal(NOT_VERIFIED, f"sender {found.sender!r} is {found.state}: only verified senders may send")
    if "sms" not in found.capabilities:
        return Refusal(NOT_VERIFIED, f"sender {found.sender!r} is registered for replies only (no sms capability)")
    if found.countries is not None and destination not in found.countries:
        allowed = ", ".join(sorted(found.countries)) or "no country"
        return Refusal(NOT_ALLOWED_FOR_COUNTRY, f"sender {found.sender!r} may send to {allowed}, not {destination}")
    rule = rules.rule(destination)
    if found.kind == "alphanumeric" and rule.alphanumeric == "not_supported":
        return Refusal(NOT_ALLOWED_FOR_COUNTRY, f"alphanumeric sender ids are not supported in {destination}: "
                                                "send from a local number")
    if found.kind in ("long_code", "toll_free") and rule.local_number_required:
        home = number_country(found.sender)
        if home != destination:
            return Refusal(NOT_ALLOWED_FOR_COUNTRY, f"{destination} requires a local number: {found.sender!r} is "
                                                    f"a number of {home or 'another country'}")
    if found.kind == "short_code" and found.countries is None:
        return Refusal(NOT_ALLOWED_FOR_COUNTRY, f"short code {found.sender!r} has no country: it sends only in the "
                                                "countries it is registered in")
    registration = rule.registrations.get(found.kind)
    if registration is not None and missing_registration(found, registration):
        fields = ", ".join(REGISTRATIONS[registration])
        return Refusal(REGISTRATION_MISSING, f"a {found.kind.replace('_', ' ')} sending to {destination} needs its "
                                              f"{registration} registration ({fields}) on the sender")
    return None


def check_named(book: SenderBook, sender: str) -> Refusal | None:
    """For things that name a sender before they have a destination (templates, campaigns,
    journeys): the sender is one of the tenant's verified senders that can send."""
    found = book.get(sender)
    if found is None:
        return Refusal(NOT_REGISTERED, f"sender {sender!r} is not one of this tenant's registered senders")
    if found.state != "verified":
        return Refusal(NOT_VERIFIED, f"sender {found.sender!r} is {found.state}: only verified senders may send")
    if "sms" not in found.capabilities:
        return Refusal(NOT_VERIFIED, f"sender {found.sender!r} is registered for replies only (no sms capability)")
    return None


def check_registrations(registrations: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """A sender's registrations as given (API, admin): known names, string fields; ValueError otherwise."""
    out: dict[str, dict[str, str]] = {}
    for name, record in registrations.items():
        if name not in REGISTRATIONS:
            raise ValueError(f"unknown registration {name!r} (one of {', '.join(REGISTRATIONS)})")
        if not isinstance(record, Mapping):
            raise ValueError(f"registration {name!r} is an object")
        values = {str(k): str(v).strip() for k, v in record.items() if v is not None and str(v).strip()}
        unknown = set(values) - set(REGISTRATIONS[name]) - {"template_id"}
        if unknown:
            raise ValueError(f"registration {name!r} takes {', '.join(REGISTRATIONS[name])}, not {', '.join(sorted(unknown))}")
        if any(len(v) > 64 for v in values.values()):
            raise ValueError("a registration id is at most 64 characters")
        out[name] = values
    return out


def named_problem(book: SenderBook, sender: str | None, loc: str) -> dict[str, str] | None:
    """An API error detail when a template, campaign or journey names a sender it may not use."""
    if sender is None:
        return None
    refused = check_named(book, sender)
    return None if refused is None else {"loc": loc, "code": refused.code, "msg": refused.message}


def carrier_ids(book: SenderBook, sender: str, destination: str, rules: SenderRules) -> dict[str, str]:
    """The registration ids a message from ``sender`` to ``destination`` carries to the carrier:
    those of the registration the destination's rules require of that kind of sender, named
    ``<registration>_<field>`` (``ten_dlc_brand_id``, ``ten_dlc_campaign_id``,
    ``toll_free_verification_id``, ``dlt_entity_id``). Empty when none is required."""
    found = book.get(sender)
    if found is None:
        return {}
    registration = rules.rule(destination).registrations.get(found.kind)
    if registration is None:
        return {}
    record = found.registrations.get(registration) or {}
    prefix = "toll_free" if registration == "toll_free_verification" else registration
    return {f"{prefix}_{name}": str(value)
            for name, value in record.items() if value and name in REGISTRATIONS[registration]}
