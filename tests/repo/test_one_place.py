"""Rules that exist in one place each: the erasure hash (shared/erasure.py, in Python and in SQL)
and "newest consent wins" (shared/consent.py). No I/O but reading the source."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.consent import becomes_current
from shared.erasure import LEGACY_PREFIX, sql_hash_forms

ROOT = Path(__file__).resolve().parents[2]
HASH_FORMULA = re.compile(r"herald-erasure-v1|hmac\(|sha256\(convert_to|hashlib\.sha256\([^)]*tenant")


def test_the_erasure_hash_formula_is_written_only_in_shared_erasure() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("services", "shared")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "shared" / "erasure.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if HASH_FORMULA.search(line)
    ]
    assert found == [], "use shared.erasure (ErasureKeys, legacy_hash, sql_hash_forms)"


def test_the_sql_forms_are_the_python_formula() -> None:
    keyed, legacy = sql_hash_forms("c.tenant_id", "c.phone_e164", "$1::text[]", "$2::bytea[]", True)
    assert "hmac(convert_to(c.tenant_id || ':' || c.phone_e164, 'UTF8'), k.key, 'sha256')" in keyed
    assert "unnest($1::text[], $2::bytea[]) AS k(v, key)" in keyed and "k.v || ':' ||" in keyed
    assert f"sha256(convert_to('{LEGACY_PREFIX}' || c.tenant_id || ':' || c.phone_e164, 'UTF8'))" in legacy
    assert sql_hash_forms("t", "p", None, None, False) == []
    assert len(sql_hash_forms("t", "p", None, None, True)) == 1


def test_newest_consent_wins() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert becomes_current(now, None)  # the first record
    assert becomes_current(now, now - timedelta(seconds=1))
    assert becomes_current(now, now)  # a tie: the later arrival
    assert not becomes_current(now - timedelta(days=1), now)  # a late, older record joins the history only
