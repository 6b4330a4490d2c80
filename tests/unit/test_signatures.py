import pytest

from shared.signatures import SignatureError, sign, verify

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
