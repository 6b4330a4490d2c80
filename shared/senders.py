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

import hashlib
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
    rate_per_s: float | None = None  # contracted throughput (segments per second); None: the gateway's only
    burst: float | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Sender:
        registrations = row.get("registrations") or {}
        if isinstance(registrations, str):
            registrations = json.loads(registrations)
        countries = row.get("countries")
        return cls(row["sender"], row["kind"], row["state"], frozenset(countries) if countries is not None else None,
                   frozenset(row.get("capabilities") or ("sms",)), registrations,
                   row.get("rate_per_s"), row.get("burst"))


@dataclass(frozen=True, slots=True)
class Pool:
    """A tenant's named, ordered list of its senders; ``geo_match``: prefer a sender of the
    recipient's country (and, for US/CA numbers, of its area code)."""

    name: str
    senders: tuple[str, ...]
    geo_match: bool = False

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Pool:
        return cls(row["name"], tuple(row.get("senders") or ()), bool(row.get("geo_match")))


@dataclass(frozen=True, slots=True)
class SenderBook:
    """One tenant's senders, by their registry form."""

    senders: Mapping[str, Sender] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]], pools: Iterable[Mapping[str, Any]] = ()) -> SenderBook:
        return cls({s.sender: s for s in (Sender.of(r) for r in rows)}, {p.name: p for p in (Pool.of(r) for r in pools)})

    @classmethod
    def from_json(cls, text: str | list[Any] | None, pools: str | list[Any] | None = None) -> SenderBook:
        """From the JSON arrays the key query aggregates (shared/auth.py)."""
        rows = json.loads(text) if isinstance(text, str) else (text or [])
        pool_rows = json.loads(pools) if isinstance(pools, str) else (pools or [])
        return cls.of(rows, pool_rows)

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


# --- pools and sticky senders -------------------------------------------------------------------

POOL_NOT_FOUND = "sender_pool_not_found"
POOL_EXHAUSTED = "sender_pool_exhausted"
POOL_CODES = (POOL_NOT_FOUND, POOL_EXHAUSTED)
POOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NANP = ("US", "CA")


@dataclass(frozen=True, slots=True)
class PoolChoice:
    """The sender a pool gives a recipient: ``how`` is ``sticky`` (the one it had), ``assigned``
    (its first from this pool) or ``fallback`` (its sticky sender ``previous`` could not send:
    ``reason`` says why, a refusal code or ``removed_from_pool``)."""

    pool: str
    sender: str
    how: str
    previous: str | None = None
    reason: str | None = None
    reason_message: str | None = None

    def detail(self) -> dict[str, str]:
        """For the message's timeline (the accepted event's ``sender_choice``)."""
        out = {"sender_pool": self.pool, "sender": self.sender, "sender_choice": self.how}
        if self.previous is not None:
            out["fallback_from"] = self.previous
        if self.reason is not None:
            out["fallback_reason"] = self.reason
        if self.reason_message is not None:
            out["fallback_message"] = self.reason_message[:300]
        return out

    @property
    def changed(self) -> bool:
        """The assignment to store: a first one or a fallback (a sticky one is stored already)."""
        return self.how != "sticky"


def area_code(e164: str) -> str | None:
    """A North American number's area code (+1 NPA), else None."""
    return e164[2:5] if e164.startswith("+1") and len(e164) == 12 else None


def geo_rank(found: Sender, recipient: str, country: str) -> int:
    """How well a sender matches the recipient: 2 same area code (US/CA), 1 same country (its
    ``countries`` name it, or a number of that country), 0 otherwise."""
    home = number_country(found.sender)
    same_country = home == country or (found.countries is not None and country in found.countries)
    if not same_country:
        return 0
    if country in _NANP and home in _NANP:
        ours = area_code(recipient)
        if ours is not None and area_code(found.sender) == ours:
            return 2
    return 1


def _spread(recipient: str, pool: str, candidates: list[str]) -> str:
    """A stable pick among equally good senders, so a pool's recipients spread over them."""
    digest = hashlib.sha256(f"{pool}:{recipient}".encode()).digest()
    return candidates[int.from_bytes(digest[:8], "big") % len(candidates)]


def choose_from_pool(book: SenderBook, pool_name: str, recipient: str, country: str, rules: SenderRules,
                     sticky: str | None = None) -> PoolChoice | Refusal:
    """Which of pool ``pool_name``'s senders sends to ``recipient`` (E.164, of ``country``).

    ``sticky``: the sender the recipient got from this pool before; kept while it may send (one
    of the pool's senders that passes :func:`check`). Otherwise the first usable sender in pool
    order falls back for it (with ``geo_match``: the best geographic match first, pool order among
    equals). A recipient new to the pool gets one of the best-matching usable senders, spread
    over them by a stable hash of the number. Refused when the pool does not exist or none of
    its senders may send to the recipient."""
    pool = book.pools.get(pool_name)
    if pool is None:
        return Refusal(POOL_NOT_FOUND, f"sender pool {pool_name!r} is not one of this tenant's pools "
                                       "(create it with PUT /v1/sender-pools/{name})")
    members = list(dict.fromkeys(normalise(s) for s in pool.senders))
    refusals = {s: check(book, s, country, rules) for s in members}
    usable = [s for s in members if refusals[s] is None]
    if sticky is not None:
        sticky = normalise(sticky)
        if sticky in usable:
            return PoolChoice(pool.name, sticky, "sticky")
    if not usable:
        first = refusals[members[0]] if members else None
        return Refusal(POOL_EXHAUSTED, f"no sender of pool {pool.name!r} may send to {country}"
                       + (f" (first: {first.message})" if first is not None else ": the pool is empty"))
    if pool.geo_match:
        ranks = {s: geo_rank(book.senders[s], recipient, country) for s in usable}
        best = max(ranks.values())
        ranked = [s for s in usable if ranks[s] == best]
    else:
        ranked = usable
    if sticky is None:
        return PoolChoice(pool.name, _spread(recipient, pool.name, ranked), "assigned")
    refused = refusals.get(sticky)
    if sticky not in refusals:
        reason, message = "removed_from_pool", f"{sticky!r} is no longer in pool {pool.name!r}"
    elif refused is not None:
        reason, message = refused.code, refused.message
    else:  # pragma: no cover - a usable sticky sender was kept above
        reason, message = "unusable", ""
    return PoolChoice(pool.name, ranked[0], "fallback", sticky, reason, message)


def throttle_of(book: SenderBook, sender: str) -> tuple[str, float, float | None] | None:
    """A sender's contracted throughput: (kind, segments per second, burst), None without one."""
    found = book.get(sender)
    if found is None or found.rate_per_s is None:
        return None
    return found.kind, float(found.rate_per_s), float(found.burst) if found.burst is not None else None
