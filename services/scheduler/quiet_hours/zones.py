"""The recipient's time zone(s), and wall-clock arithmetic that survives DST.

Zones come from the pinned ``tzdata`` package, never from the machine's tz database:
:func:`load_zone` builds each :class:`~zoneinfo.ZoneInfo` with ``ZoneInfo.from_file`` on
tzdata's own file. ``zoneinfo.reset_tzpath([])`` would do the same for the whole process, but
it is global, order-dependent (zones already cached keep the system's data) and would change
what every other module gets from ``ZoneInfo(key)``; this module changes nothing outside it.
The zones it builds never leave it: every instant it returns is in UTC (``datetime.UTC``), so
nothing downstream pickles or compares a ``from_file`` zone (docs/quiet-hours.md, "Time zone data").

Which zones: the contact's IANA zone when the tenant knows it, else the zones phonenumbers
gives for the number (``timezone.time_zones_for_number``: one or several), else, when the
number tells nothing (``Etc/Unknown``), every zone of the country (tzdata's ``zone.tab``).
Several zones mean "most restrictive": the engine allows a moment only if it is allowed in
every one of them.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import phonenumbers
import tzdata
from phonenumbers import timezone as pn_timezone

TZDATA_VERSION: str = tzdata.IANA_VERSION  # e.g. "2026f": recorded with every decision
UNKNOWN_ZONE = "Etc/Unknown"  # phonenumbers' answer when it cannot tell

_KEY = re.compile(r"^[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*$")


class UnknownZoneError(ValueError):
    """Not a zone in the pinned tz database."""


def _read_tzdata_text(name: str) -> str:
    return importlib.resources.files("tzdata.zoneinfo").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _links() -> dict[str, str]:
    """Backward links (``Asia/Calcutta`` → ``Asia/Kolkata``) from tzdata's ``tzdata.zi``."""
    links: dict[str, str] = {}
    for line in _read_tzdata_text("tzdata.zi").splitlines():
        if line.startswith("L "):
            _, target, link = line.split()
            links[link] = target
    return links


@lru_cache(maxsize=1)
def _zone_tab() -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """country → zones in ``zone.tab`` order (main zone first), and each zone's line number."""
    by_country: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for number, line in enumerate(_read_tzdata_text("zone.tab").splitlines()):
        if not line or line.startswith("#"):
            continue
        country, _coordinates, key, *_ = line.split("\t")
        by_country.setdefault(country, []).append(key)
        order.setdefault(key, number)
    return {country: tuple(keys) for country, keys in by_country.items()}, order


def canonical_zone(key: str) -> str:
    """The zone a backward link points to (phonenumbers still says ``Asia/Calcutta``)."""
    seen = 0
    while key in _links() and seen < 8:  # links do not chain in tzdata, but never loop
        key = _links()[key]
        seen += 1
    return key


@lru_cache(maxsize=1024)
def load_zone(key: str) -> ZoneInfo:
    """The zone ``key`` built from the pinned tzdata package (not the system's database)."""
    if not _KEY.match(key) or ".." in key:
        raise UnknownZoneError(f"{key!r} is not an IANA time zone name")
    *packages, resource = key.split("/")
    package = ".".join(["tzdata.zoneinfo", *packages])
    try:
        with importlib.resources.files(package).joinpath(resource).open("rb") as handle:
            return ZoneInfo.from_file(handle, key=key)
    except (ModuleNotFoundError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError) as exc:
        raise UnknownZoneError(f"{key!r} is not a time zone in tzdata {TZDATA_VERSION}") from exc


def is_zone(key: str) -> bool:
    try:
        load_zone(key)
    except UnknownZoneError:
        return False
    return True


def country_zones(country: str) -> tuple[str, ...]:
    """Every zone tzdata's ``zone.tab`` lists for an ISO 3166 alpha-2 country (main zone first)."""
    return _zone_tab()[0].get(country.upper(), ())


def _zone_rank(key: str) -> tuple[int, str]:
    return (_zone_tab()[1].get(key, 1_000_000), key)


# -- US states from the area code --------------------------------------------------------------
# Generated from phonenumbers' offline geocoder (9.0.43: description_for_number of numbers in each
# area code whose region is US; every area code lies in one state). A unit test re-derives it from
# the installed geocoder, so a phonenumbers upgrade that adds or moves an area code fails loudly.
# Area codes of Canada and of the other NANP countries are not here: their region is not US.
_US_AREA_CODES = """
    AK 907
    AL 205 251 256 334 659 938
    AR 327 479 501 870
    AZ 480 520 602 623 928
    CA 209 213 279 310 323 341 350 369 408 415 424 442 510 530 559 562 619 626 628 650 657 661 669 707 714 738 747 760 805 818 820 831 840 858 909 916 925 949 951
    CO 303 719 720 748 970 983
    CT 203 475 860 959
    DC 202 771
    DE 302
    FL 239 305 321 324 352 386 407 448 561 645 656 689 727 728 754 772 786 813 850 863 904 941 954
    GA 229 404 470 478 678 706 762 770 912 943
    HI 808
    IA 319 515 563 641 712
    ID 208 986
    IL 217 224 309 312 331 447 464 618 630 708 730 773 779 815 847 872
    IN 219 260 317 463 574 765 812 930
    KS 316 620 785 913
    KY 270 364 502 606 859
    LA 225 318 337 504 985
    MA 339 351 413 508 617 774 781 857 978
    MD 227 240 301 410 443 667
    ME 207
    MI 231 248 269 313 517 586 616 734 810 906 947 989
    MN 218 320 507 612 651 763 952
    MO 235 314 417 557 573 636 660 816 975
    MS 228 601 662 769
    MT 406
    NC 252 336 472 704 743 828 910 919 980 984
    ND 701
    NE 308 402 531
    NH 603
    NJ 201 551 609 640 732 848 856 862 908 973
    NM 505 575
    NV 702 725 775
    NY 212 315 329 332 347 363 516 518 585 607 631 646 680 716 718 838 845 914 917 929 934
    OH 216 220 234 283 326 330 380 419 440 513 567 614 740 937
    OK 405 539 572 580 918
    OR 458 503 541 971
    PA 215 223 267 272 412 445 484 570 582 610 717 724 814 835 878
    RI 401
    SC 803 821 839 843 854 864
    SD 605
    TN 423 615 629 731 865 901 931
    TX 210 214 254 281 325 346 361 409 430 432 469 512 682 713 726 737 806 817 830 832 903 915 936 940 945 956 972 979
    UT 385 435 801
    VA 276 434 540 571 686 703 757 804 826 948
    VT 802
    WA 206 253 360 425 509 564
    WI 262 274 353 414 534 608 715 920
    WV 304 681
    WY 307
"""
US_AREA_CODES: dict[str, str] = {
    code: state
    for line in _US_AREA_CODES.strip().splitlines()
    for state, *codes in [line.split()]
    for code in codes
}


def us_state_for_number(e164: str) -> str | None:
    """The US state of a number's area code (``+1 512 …`` → ``TX``), or None (toll-free, not US)."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    if number.country_code != 1 or phonenumbers.region_code_for_number(number) != "US":
        return None
    national = str(number.national_number)
    return US_AREA_CODES.get(national[:3]) if len(national) == 10 else None


# -- resolution ---------------------------------------------------------------------------------
ZoneSource = Literal["contact", "number", "country", "fallback"]


@dataclass(frozen=True, slots=True)
class ZoneResolution:
    zones: tuple[str, ...]  # canonical IANA names, most populous first where tzdata says so
    source: ZoneSource
    note: str | None = None  # e.g. why the contact's zone was not used


def number_zones(e164: str) -> tuple[str, ...]:
    """phonenumbers' zones for the number, canonical names; () when it cannot tell."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = {canonical_zone(key) for key in pn_timezone.time_zones_for_number(number) if key != UNKNOWN_ZONE}
    return tuple(sorted((key for key in zones if is_zone(key)), key=_zone_rank))


def resolve_zones(to: str, country: str, contact_timezone: str | None = None) -> ZoneResolution:
    """The zone(s) to evaluate a message to ``to`` in (see the module docstring for the order)."""
    note = None
    if contact_timezone:
        key = canonical_zone(contact_timezone.strip())
        if is_zone(key):
            return ZoneResolution((key,), "contact")
        note = f"contact time zone {contact_timezone!r} is unknown to tzdata {TZDATA_VERSION}; ignored"
    in_country = set(country_zones(country)) if country else set()
    from_number = number_zones(to)
    if from_number:
        # A toll-free +1 800 number "may be" in 42 zones across the NANP; keep those of its country.
        narrowed = tuple(key for key in from_number if key in in_country)
        return ZoneResolution(narrowed or from_number, "number", note)
    if in_country:
        return ZoneResolution(tuple(sorted(in_country, key=_zone_rank)), "country", note)
    extra = f"no zone known for {to!r} ({country or 'no country'}); evaluated in UTC"
    return ZoneResolution(("Etc/UTC",), "fallback", f"{note}; {extra}" if note else extra)


# -- wall-clock boundaries ------------------------------------------------------------------------
def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first UTC instant in (before, after] with ``after``'s UTC offset (tz transitions fall on whole seconds)."""
    target = after.astimezone(zone).utcoffset()
    low, high = math.floor(before.timestamp()), math.ceil(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _candidates(day: date, minute: int, zone: ZoneInfo) -> tuple[datetime, datetime, bool]:
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)  # minute 1440 = next midnight
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    exists = any(moment.astimezone(zone).replace(tzinfo=None) == wall for moment in (first, second))
    return min(first, second), max(first, second), exists


def window_start(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The instant from which the wall clock reads at least ``minute`` past midnight of ``day``.

    Ambiguous (the hour repeated when clocks go back): the second reading, so the repeated
    earlier hour is never inside the window. Nonexistent (skipped when clocks go forward): the
    moment the clock jumps, the first instant it reads later than ``minute``.
    """
    early, late, exists = _candidates(day, minute, zone)
    return late if exists else _transition(early, late, zone)


def window_end(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The first instant the wall clock reads ``minute`` past midnight of ``day`` (or jumps past it)."""
    early, late, exists = _candidates(day, minute, zone)
    return early if exists else _transition(early, late, zone)
