"""Recipient numbers: E.164 parsing and checks with phonenumbers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, PhoneNumberType

# Types that can take an SMS. FIXED_LINE_OR_MOBILE covers the NANP (US, CA), where the
# numbering plan does not tell mobiles apart.
SMS_CAPABLE = frozenset({"MOBILE", "FIXED_LINE_OR_MOBILE"})
_TYPE_NAMES = {v: k for k, v in vars(PhoneNumberType).items() if isinstance(v, int) and k.isupper()}


class PhoneError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str
    country: str
    number_type: str


def parse_e164(raw: str, allowed_types: Iterable[str] | None = SMS_CAPABLE) -> Phone:
    """Parse ``raw`` as E.164 or raise :class:`PhoneError` with a machine-readable code.

    ``allowed_types=None`` accepts any valid number (suppression lists, for example).
    """
    text = raw.strip()
    if not text.startswith("+"):
        raise PhoneError("not_e164", "number must be in E.164 form, starting with + and the country code")
    try:
        number = phonenumbers.parse(text, None)
    except NumberParseException as exc:
        raise PhoneError("unparseable_number", f"number cannot be parsed: {exc._msg}") from None
    # number_type() is UNKNOWN exactly when the number matches no pattern of its region, which
    # is what is_valid_number() checks; asking once halves the cost on the hot path.
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        if not phonenumbers.is_possible_number(number):
            raise PhoneError("impossible_number", "number has an impossible length for its country")
        raise PhoneError("invalid_number", "number is not valid in its country's numbering plan")
    number_type = _TYPE_NAMES.get(kind, "UNKNOWN")
    allowed = frozenset(allowed_types) if allowed_types is not None else None
    if allowed is not None and number_type not in allowed:
        raise PhoneError(
            "unsupported_number_type",
            f"{number_type.lower()} numbers cannot receive SMS here (allowed: {', '.join(sorted(allowed)).lower()})",
        )
    return Phone(
        e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        country=phonenumbers.region_code_for_number(number) or "ZZ",
        number_type=number_type,
    )


def region_of_e164(e164: str) -> str:
    """The region (ISO 3166-1 alpha-2, "001" for non-geographic codes, "ZZ" if unknown) of a
    number already in E.164 form, as phonenumbers' ``region_code_for_number`` gives it.

    Country calling codes are prefix-free, so the first one to three digits that name a code
    are the code; most codes belong to one region and need no parse at all (about 2 µs instead
    of 100 µs). Shared codes (+1, +7, +44, …) fall back to the full parse.
    """
    digits = e164[1:4]
    for length in (1, 2, 3):
        regions = COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:length])) if digits[:length].isdigit() else None
        if regions:
            if len(regions) == 1:
                return regions[0]
            break
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None)) or "ZZ"
    except NumberParseException:
        return "ZZ"
