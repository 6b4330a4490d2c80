"""A message's validity as each gateway takes it: the time it still has left when submitted.

A message with ``validity_s`` carries ``expires_at`` (accepted_at + validity_s). What a carrier
is told is what is *left* at submission (an OTP accepted 100 s ago with 300 s of validity gets
200 s), so a message that waited in Herald's queues is not kept alive at the carrier past its
expiry. A message without validity sends none: the carrier's default applies.

Pure functions: the time is passed in.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

#: Twilio's ValidityPeriod accepts 1 to 36,000 seconds; Herald's own API the same range.
MAX_HTTP_VALIDITY_S = 36_000
#: The longest relative validity_period SMPP can say without years/months: 99 days.
MAX_SMPP_RELATIVE_S = 99 * 86_400 + 86_399


def remaining_s(expires_at: datetime | None, now: datetime) -> int | None:
    """Whole seconds left before ``expires_at`` (rounded down, at least 1); None: no validity."""
    if expires_at is None:
        return None
    left = (expires_at - now).total_seconds()
    return max(1, math.floor(left))


def clamp_http(seconds: int) -> int:
    """Into the range Twilio (ValidityPeriod) and Herald's API (validity_s) accept: 1..36,000."""
    return min(MAX_HTTP_VALIDITY_S, max(1, seconds))


def smpp_relative(seconds: int) -> str:
    """SMPP 3.4 relative time (7.1.1): ``YYMMDDhhmmss000R``, days up to 99, capped there.

    Years and months are left at 00 (their length is the SMSC's guess); the days field says it.
    """
    s = min(MAX_SMPP_RELATIVE_S, max(1, seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def smpp_absolute(expires_at: datetime) -> str:
    """SMPP 3.4 absolute time in UTC: ``YYMMDDhhmmsst00+`` (tenths of a second, offset 0)."""
    t = expires_at.astimezone(UTC)
    return t.strftime("%y%m%d%H%M%S") + f"{t.microsecond // 100_000}00+"


def smpp_validity_period(expires_at: datetime | None, now: datetime, form: str = "relative") -> str:
    """The validity_period field of a submit_sm: empty (SMSC default) without validity or when off."""
    left = remaining_s(expires_at, now)
    if left is None or form == "off":
        return ""
    if form == "absolute":
        return smpp_absolute(now + timedelta(seconds=left))
    return smpp_relative(left)

