"""The keyed hash kept for erased numbers (shared/erasure.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services.ingest.settings import IngestSettings
from services.scheduler.settings import SchedulerSettings
from shared.erasure import NO_KEYS, ErasureKeyMissing, ErasureKeys, build_keys, hash_version, key_problems, legacy_hash

K1 = "a" * 16 + "b" * 16 + "-k1"
K2 = "c" * 16 + "d" * 16 + "-k2"


def test_the_hash_is_an_hmac_under_the_current_key_and_carries_its_version() -> None:
    keys = build_keys({"k1": K1}, None)
    h = keys.hash("acme", "+34600123456")
    assert h == "k1:" + hmac.new(K1.encode(), b"acme:+34600123456", hashlib.sha256).hexdigest()
    assert hash_version(h) == "k1"
    # without the key, the number cannot be found by hashing candidates: neither the old
    # unkeyed form nor a plain sha256 of tenant and number gives it
    assert h.split(":", 1)[1] not in {legacy_hash("acme", "+34600123456"),
                                      hashlib.sha256(b"acme:+34600123456").hexdigest()}
    assert keys.hash("acme", "+34600123456") != keys.hash("other", "+34600123456")  # per tenant


def test_rotation_matches_every_version_and_legacy_while_new_hashes_use_the_current_key() -> None:
    old = build_keys({"k1": K1}, None)
    rotated = build_keys({"k1": K1, "k2": K2}, "k2")
    stored = old.hash("acme", "+34600123456")
    assert rotated.hash("acme", "+34600123456").startswith("k2:")
    candidates = rotated.candidates("acme", "+34600123456")
    assert stored in candidates and rotated.hash("acme", "+34600123456") in candidates
    assert legacy_hash("acme", "+34600123456") in candidates
    assert legacy_hash("acme", "+34600123456") not in build_keys({"k1": K1}, None, match_legacy=False).candidates(
        "acme", "+34600123456")
    assert hash_version(legacy_hash("acme", "+1")) is None
    assert rotated.knows("k1") and rotated.knows(None) and not rotated.knows("k3")


def test_no_key_refuses_to_hash_but_still_matches_legacy() -> None:
    assert not NO_KEYS.enabled
    with pytest.raises(ErasureKeyMissing):
        NO_KEYS.hash("acme", "+34600123456")
    assert NO_KEYS.candidates("acme", "+34600123456") == [legacy_hash("acme", "+34600123456")]
    with pytest.raises(ValueError):
        ErasureKeys({"k1": b"x"}, "k2")


def test_bad_keys_are_named_without_their_values() -> None:
    problems = key_problems({"k1": "short", "K 2": K2, "k3": "REPLACE_ME-" + "x" * 30}, None)
    text = "; ".join(problems)
    assert "HERALD_ERASURE_KEYS[k1]" in text and "shorter" in text
    assert "version 'K 2'" in text and "HERALD_ERASURE_KEYS[k3]" in text
    assert "several keys" in text
    assert "short" not in " ".join(p.split(":", 1)[0] for p in problems) and K2 not in text
    assert key_problems({"k1": K1}, "k9") == ["HERALD_ERASURE_KEY_CURRENT: 'k9' is not a version of HERALD_ERASURE_KEYS"]
    assert key_problems({"k1": K1, "k2": K2}, "k2") == []


def test_settings_carry_the_keys_as_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_ERASURE_KEYS", f'{{"k1": "{K1}", "k2": "{K2}"}}')
    monkeypatch.setenv("HERALD_ERASURE_KEY_CURRENT", "k2")
    for settings in (IngestSettings(), SchedulerSettings()):
        assert K1 not in repr(settings) and K2 not in repr(settings)
        assert settings.erasure_key_problems() == []
        assert settings.erasure_keyring().hash("t", "+1").startswith("k2:")
    monkeypatch.setenv("HERALD_ERASURE_KEYS", '{"k1": "changeme"}')
    monkeypatch.delenv("HERALD_ERASURE_KEY_CURRENT")
    assert any("HERALD_ERASURE_KEYS[k1]" in p for p in IngestSettings().unsafe_secrets())
