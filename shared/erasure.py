"""Erasure: the keyed hash that keeps an erased number suppressed (docs/data-map.md).

An erased number leaves one trace: ``suppression_hashes.phone_hash``, so the number never gets
marketing again. The hash is an HMAC-SHA256 of ``tenant:E.164`` under a key that lives outside
the database (``HERALD_ERASURE_KEYS``), written ``<version>:<hex>`` so keys can be rotated: a
number is checked against the hash under every configured version, new hashes use the current
one. Without the key the hash cannot be recomputed from a guessed number, so the short space of
mobile numbers cannot be walked offline.

Hashes written before keys existed are unversioned ``hex(sha256('herald-erasure-v1:' || tenant
|| ':' || E.164))``. They cannot be re-keyed (the number is gone), so they are still matched while
``HERALD_ERASURE_MATCH_LEGACY`` is on (the default); an operator may delete them
(``DELETE FROM suppression_hashes WHERE phone_hash NOT LIKE '%:%'``) once they have decided
those numbers may be dropped from suppression.

Pure: no I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

LEGACY_PREFIX = "herald-erasure-v1:"
VERSION_PATTERN = re.compile(r"^[a-z0-9]{1,16}$")
MIN_KEY_LENGTH = 32


def legacy_hash(tenant_id: str, phone_e164: str) -> str:
    """The unkeyed hash of migration 0003 (unversioned): matched, never written any more."""
    return hashlib.sha256(f"{LEGACY_PREFIX}{tenant_id}:{phone_e164}".encode()).hexdigest()


def hash_version(phone_hash: str) -> str | None:
    """The key version of a stored hash; None for a legacy (unkeyed) one."""
    version, sep, _ = phone_hash.partition(":")
    return version if sep else None


class ErasureKeyMissing(RuntimeError):
    """No erasure key is configured: an erasure would have to write an unkeyed hash."""

    def __init__(self) -> None:
        super().__init__("HERALD_ERASURE_KEYS is not set: erasure is refused until a key is configured")


@dataclass(frozen=True)
class ErasureKeys:
    """The configured HMAC keys by version, the one new hashes use, and whether legacy hashes match."""

    keys: Mapping[str, bytes]
    current: str | None
    match_legacy: bool = True

    def __post_init__(self) -> None:
        if self.current is not None and self.current not in self.keys:
            raise ValueError(f"current erasure key version {self.current!r} is not among the keys")

    @property
    def enabled(self) -> bool:
        return self.current is not None

    def hash(self, tenant_id: str, phone_e164: str) -> str:
        """The hash to store for an erased number: ``<current version>:<hex HMAC>``."""
        if self.current is None:
            raise ErasureKeyMissing()
        return self._keyed(self.current, tenant_id, phone_e164)

    def candidates(self, tenant_id: str, phone_e164: str) -> list[str]:
        """Every stored form a number's hash may have: each key version, and legacy when matched."""
        out = [self._keyed(v, tenant_id, phone_e164) for v in sorted(self.keys)]
        if self.match_legacy:
            out.append(legacy_hash(tenant_id, phone_e164))
        return out

    def knows(self, version: str | None) -> bool:
        return self.match_legacy if version is None else version in self.keys

    def _keyed(self, version: str, tenant_id: str, phone_e164: str) -> str:
        digest = hmac.new(self.keys[version], f"{tenant_id}:{phone_e164}".encode(), hashlib.sha256).hexdigest()
        return f"{version}:{digest}"


NO_KEYS = ErasureKeys({}, None)


def sql_hash_forms(tenant: str, phone: str, versions: str | None, keys: str | None, legacy: bool) -> list[str]:
    """The same hashes in SQL (pgcrypto), for a query that tests every row of a table (a segment
    filter with ``suppressed``): one ``SELECT`` per stored form of the row's hash. ``tenant`` and
    ``phone`` are SQL expressions; ``versions`` and ``keys`` the query parameters (text[] and
    bytea[]) holding the key versions and keys, never stored; ``legacy``: the unkeyed form too.
    The formula is :meth:`ErasureKeys._keyed` and :func:`legacy_hash`, side by side here."""
    message = f"{tenant} || ':' || {phone}"
    forms = []
    if versions is not None and keys is not None:
        forms.append(f"SELECT k.v || ':' || encode(hmac(convert_to({message}, 'UTF8'), k.key, 'sha256'), 'hex')"
                     f" FROM unnest({versions}, {keys}) AS k(v, key)")
    if legacy:
        forms.append(f"SELECT encode(sha256(convert_to('{LEGACY_PREFIX}' || {message}, 'UTF8')), 'hex')")
    return forms


def key_problems(keys: Mapping[str, str], current: str | None) -> list[str]:
    """What is wrong with configured keys (never their values)."""
    from shared.signatures import unsafe_secret

    problems = []
    for version, secret in keys.items():
        if not VERSION_PATTERN.match(version):
            problems.append(f"HERALD_ERASURE_KEYS: version {version!r} is not 1-16 lowercase letters or digits")
        why = unsafe_secret(secret)
        if why is None and len(secret) < MIN_KEY_LENGTH:
            why = f"it is shorter than {MIN_KEY_LENGTH} characters"
        if why:
            problems.append(f"HERALD_ERASURE_KEYS[{version}]: {why}")
    if current is not None and current not in keys:
        problems.append(f"HERALD_ERASURE_KEY_CURRENT: {current!r} is not a version of HERALD_ERASURE_KEYS")
    if current is None and len(keys) > 1:
        problems.append("HERALD_ERASURE_KEY_CURRENT: several keys are configured; name the one new hashes use")
    return problems


def build_keys(keys: Mapping[str, str], current: str | None, match_legacy: bool = True) -> ErasureKeys:
    """Keys from settings; the only key is current when none is named."""
    if current is None and len(keys) == 1:
        current = next(iter(keys))
    return ErasureKeys({v: s.encode() for v, s in keys.items()}, current if keys else None, match_legacy)
