"""Geo permissions: which destination countries a tenant may send to. Pure logic, no I/O.

A tenant's policy is two nullable columns of ``tenants`` (migration 0022):

* ``allowed_countries`` set: only those countries (ISO 3166-1 alpha-2);
* else ``country`` set: only the tenant's own country;
* else (tenants created before geo permissions): the service setting ``HERALD_GEO_DEFAULT``
  decides, ``all`` (the default: as before) or ``none``.

High-cost destinations (``HERALD_GEO_HIGH_COST_COUNTRIES``) are opt-in on top of that: refused
unless ``allowed_countries`` names them explicitly, whatever the rule above says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import phonenumbers

GeoDefault = Literal["all", "none"]
REFUSAL = "destination_not_allowed"

#: A conservative starting list of destinations where one SMS costs many times the usual and
#: that traffic pumping targets; review it against your providers' price lists.
DEFAULT_HIGH_COST = ("AZ", "BY", "CU", "KG", "TJ", "TM", "UZ")

_ALPHA2 = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class GeoPolicy:
    """One tenant's geo permissions, as stored (None: not set)."""

    country: str | None = None
    allowed_countries: frozenset[str] | None = None

    @classmethod
    def of(cls, country: str | None, allowed: Iterable[str] | None) -> GeoPolicy:
        return cls(country, frozenset(allowed) if allowed is not None else None)


@dataclass(frozen=True, slots=True)
class GeoRules:
    """The service's side: what a tenant with no policy gets, and the high-cost destinations."""

    default: GeoDefault = "all"
    high_cost: frozenset[str] = frozenset(DEFAULT_HIGH_COST)


def refusal(policy: GeoPolicy, destination: str, rules: GeoRules) -> str | None:
    """Why ``destination`` (alpha-2) is refused for a tenant with ``policy``; None: allowed."""
    allowed = policy.allowed_countries
    if allowed is not None:
        if destination in allowed:
            return None  # named explicitly: high-cost ones too
        return f"sending to {destination} is not allowed: this tenant may send to {', '.join(sorted(allowed)) or 'no country'}"
    if destination in rules.high_cost:
        return f"{destination} is a high-cost destination: it must be named in the tenant's allowed_countries"
    if policy.country is not None:
        if destination == policy.country:
            return None
        return f"sending to {destination} is not allowed: this tenant may send to its own country, {policy.country}"
    if rules.default == "none":
        return f"sending to {destination} is not allowed: this tenant has no country and no allowed_countries"
    return None


def country_code(value: str) -> str:
    """An ISO 3166-1 alpha-2 code that phone numbers can have, upper-cased; ValueError otherwise."""
    code = value.strip().upper()
    if not _ALPHA2.fullmatch(code) or code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"not a country code (ISO 3166-1 alpha-2) with phone numbers: {value[:8]!r}")
    return code


def country_codes(values: Iterable[str]) -> list[str]:
    """Checked, upper-cased, deduplicated and sorted codes."""
    return sorted({country_code(v) for v in values})


def parse_country_list(text: str) -> list[str]:
    """``"es, FR"`` -> ``["ES", "FR"]``; an empty text is an empty list."""
    return country_codes(p for p in text.split(",") if p.strip())
