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


def test_region_of_e164_matches_phonenumbers_for_every_calling_code() -> None:
    import phonenumbers
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    from shared.phones import region_of_e164

    checked = 0
    for code, regions in COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            example = phonenumbers.example_number(region) if region != "001" else None
            if example is None:
                example = phonenumbers.example_number_for_non_geo_entity(code)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            assert region_of_e164(e164) == (phonenumbers.region_code_for_number(example) or "ZZ"), e164
            checked += 1
    assert checked > 240
    assert region_of_e164("+14155550123") == "US" and region_of_e164("+16135550123") == "CA"
    assert region_of_e164("+447400123456") == "GB" and region_of_e164("+34600000001") == "ES"
    assert region_of_e164("+999123") == "ZZ"
