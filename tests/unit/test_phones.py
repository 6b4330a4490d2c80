import pytest

from shared.phones import PhoneError, parse_e164


@pytest.mark.parametrize(
    ("raw", "e164", "country"),
    [("+34600000001", "+34600000001", "ES"), ("+1 415 555 0123", "+14155550123", "US"), ("+919812345678", "+919812345678", "IN")],
)
def test_valid(raw: str, e164: str, country: str) -> None:
    phone = parse_e164(raw)
    assert (phone.e164, phone.country) == (e164, country)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("600123456", "not_e164"),
        ("+", "unparseable_number"),
        ("+34123", "impossible_number"),
        ("+447700900123", "invalid_number"),
        ("+34910000000", "unsupported_number_type"),  # fixed line
        ("+34803123456", "unsupported_number_type"),  # premium rate
    ],
)
def test_rejected_with_code(raw: str, code: str) -> None:
    with pytest.raises(PhoneError) as info:
        parse_e164(raw)
    assert info.value.code == code


def test_fixed_line_allowed_when_configured() -> None:
    assert parse_e164("+34910000000", {"FIXED_LINE"}).number_type == "FIXED_LINE"
    assert parse_e164("+34910000000", None).e164 == "+34910000000"
