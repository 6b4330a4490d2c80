import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from shared.signatures import SignatureError, sign, unsafe_secret, verify

SECRET = b"s3cret"


def test_round_trip() -> None:
    header = sign(SECRET, b'{"a":1}', 1_700_000_000)
    verify(SECRET, b'{"a":1}', header, now=1_700_000_010)


@pytest.mark.parametrize(
    ("header", "body", "now", "code"),
    [
        (None, b"x", 0, "signature_missing"),
        ("garbage", b"x", 0, "signature_malformed"),
        ("t=abc,v1=00", b"x", 0, "signature_malformed"),
        (sign(SECRET, b"x", 1000), b"x", 2000, "signature_expired"),
        (sign(SECRET, b"x", 1000), b"y", 1000, "signature_invalid"),
        (sign(b"other", b"x", 1000), b"x", 1000, "signature_invalid"),
    ],
)
def test_rejections(header: str | None, body: bytes, now: int, code: str) -> None:
    with pytest.raises(SignatureError) as info:
        verify(SECRET, body, header, now=now)
    assert info.value.code == code


def test_v2_binds_the_context_it_was_made_for() -> None:
    body, now = b'{"receipts": []}', 1_764_000_000
    header = sign(b"k" * 32, body, now, context="gw-a")
    verify(b"k" * 32, body, header, now=now, context="gw-a")
    for other in ("gw-b", "gw-a."):
        with pytest.raises(SignatureError) as err:
            verify(b"k" * 32, body, header, now=now, context=other)
        assert err.value.code == "signature_invalid"
    # The unbound v1 form is not accepted where a context is required, nor v2 where it is not.
    with pytest.raises(SignatureError):
        verify(b"k" * 32, body, sign(b"k" * 32, body, now), now=now, context="gw-a")
    with pytest.raises(SignatureError):
        verify(b"k" * 32, body, header, now=now)


@pytest.mark.parametrize(
    ("secret", "why"),
    [("sim-receipt-secret", "published"), ("REPLACE_ME-sim-receipt-secret", "placeholder"), ("short", "shorter"),
     ("", "shorter"), ("ChangeMe", "published")],
)
def test_unsafe_secrets_are_named(secret: str, why: str) -> None:
    assert why in (unsafe_secret(secret) or "")


def test_a_random_secret_is_safe() -> None:
    assert unsafe_secret(secrets.token_urlsafe(24)) is None


def test_ingest_refuses_to_start_with_a_published_receipt_secret() -> None:
    """Before any connection: the database address below has nothing listening."""
    env = {"PATH": "/usr/bin:/bin", "HERALD_RECEIPT_SECRETS": '{"sim": "sim-receipt-secret"}',
           "HERALD_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "HERALD_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "services.ingest"], capture_output=True, text=True, timeout=60,
                            env=env, cwd=Path(__file__).resolve().parents[3])
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and "HERALD_RECEIPT_SECRETS[sim]: it is a published default" in result.stderr
    assert "sim-receipt-secret" not in result.stderr  # the value itself is never printed


def test_no_receipt_secret_ships_by_default() -> None:
    from services.ingest.settings import IngestSettings
    from services.simulator.settings import SimulatorSettings

    assert IngestSettings().receipt_secrets == {}
    a, b = SimulatorSettings().receipt_secret.get_secret_value(), SimulatorSettings().receipt_secret.get_secret_value()
    assert a != b and unsafe_secret(a) is None
