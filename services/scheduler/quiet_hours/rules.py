"""Quiet-hour rules as data: loading, validating, and tenant overrides that only narrow them.

The rules live in ``rules.yaml`` beside this module (docs/quiet-hours.md explains each one and
how to add a country). Loading is strict: an unknown key, a weekday given twice or not at all, a
window that ends before it starts, or a rule without a source is an error naming the place, so
a typo never silently allows a message at night.

A rule says, per weekday, the windows (local wall-clock time) in which a marketing message may
be delivered; a weekday with no window is a day off; public holidays from the ``holidays``
package may be days off too. Rules only ever add up by intersection: a moment is allowed when
every applicable rule allows it (country, US state, tenant override), in every candidate zone.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any, Literal

import holidays as holidays_lib
import yaml

from services.scheduler.quiet_hours.zones import is_zone

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SOURCE_KINDS = ("law", "regulator", "operator", "vendor", "self-regulation")
LOCAL = "local"  # a rule's zones: the recipient's candidate zones
RECIPIENT_CALENDAR = "*"  # a tenant override's holidays: those of the message's country

Interval = tuple[int, int]  # minutes after local midnight, [start, end), end ≤ 1440


class RulesError(ValueError):
    """The rules data is invalid; the message names the entry and field."""


class LooserOverrideError(RulesError):
    """A tenant override would allow a moment the rule it narrows forbids."""


# -- model -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    start: int  # minutes after local midnight
    end: int  # exclusive; 1440 = midnight at the end of the day

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # law, regulator, operator, vendor, self-regulation
    citation: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class HolidayPolicy:
    """Public holidays (``holidays`` package) that are days off for a rule.

    ``calendar`` is the package's country code (``*`` in a tenant override: the message's
    country). ``subdivision`` pins one (a US state's own rule); otherwise the contact's
    subdivision is used when known, and when it is not, ``when_subdivision_unknown`` says which
    calendars count: ``national`` (the country's only), ``all`` (the union over every
    subdivision: the cautious reading when a region's holiday could be the recipient's), or a
    list of subdivisions added to the national calendar.
    """

    calendar: str
    subdivision: str | None = None
    when_subdivision_unknown: Literal["national", "all"] | tuple[str, ...] = "national"

    def holiday(self, day: date, country: str, contact_subdivision: str | None) -> str | None:
        """The name of the holiday that makes ``day`` a day off, or None."""
        calendar = country if self.calendar == RECIPIENT_CALENDAR else self.calendar
        for subdivision in self._subdivisions(calendar, contact_subdivision):
            name = _holidays(calendar, subdivision, day.year).get(day)
            if name is not None:
                return name if subdivision is None else f"{name} ({calendar}-{subdivision})"
        return None

    def _subdivisions(self, calendar: str, contact_subdivision: str | None) -> tuple[str | None, ...]:
        if self.subdivision is not None:
            return (self.subdivision,)
        known = _calendar_subdivisions(calendar)
        if contact_subdivision:
            for candidate in (contact_subdivision.strip(), contact_subdivision.strip().upper()):
                if candidate in known:
                    return (candidate,)
        if self.when_subdivision_unknown == "national":
            return (None,)
        if self.when_subdivision_unknown == "all":
            return (None, *known)
        return (None, *self.when_subdivision_unknown)


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    days: tuple[tuple[Window, ...], ...]  # index 0 = Monday; () = day off
    holidays: HolidayPolicy | None = None
    zones: tuple[str, ...] = (LOCAL,)  # where the windows are read: LOCAL and/or fixed IANA zones
    sources: tuple[Source, ...] = ()
    last_checked: date | None = None
    notes: str = ""

    def windows_on(self, weekday: int) -> tuple[Window, ...]:
        return self.days[weekday]

    def describe_day(self, weekday: int) -> str:
        windows = self.days[weekday]
        return ", ".join(str(window) for window in windows) if windows else "day off"

    def describe(self) -> str:
        """The week in a short form, e.g. ``Mon-Fri 09:00-21:00; Sat-Sun off``."""
        parts: list[str] = []
        start = 0
        for weekday in range(1, 8):
            if weekday == 7 or self.days[weekday] != self.days[start]:
                label = WEEKDAYS[start].title() + (f"-{WEEKDAYS[weekday - 1].title()}" if weekday - 1 > start else "")
                parts.append(f"{label} {self.describe_day(start).replace('day off', 'off')}")
                start = weekday
        text = "; ".join(parts)
        if self.holidays is not None:
            text += "; public holidays off"
        return text


@dataclass(frozen=True)
class CountryRules:
    country: str
    rule: Rule
    subdivision_label: str = "subdivision"
    subdivisions: Mapping[str, Rule] = field(default_factory=dict)
    # When the recipient's subdivision (US state) cannot be told: "all" applies every subdivision
    # rule at once (the cautious choice), "none" only the country's.
    when_subdivision_unknown: Literal["all", "none"] = "all"


@dataclass(frozen=True)
class RuleBook:
    default: Rule
    countries: Mapping[str, CountryRules]
    version: int = 1

    def country(self, code: str) -> CountryRules | None:
        return self.countries.get(code.upper())

    def rules(self) -> Iterable[Rule]:
        yield self.default
        for country in self.countries.values():
            yield country.rule
            yield from country.subdivisions.values()


# -- holidays ---------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _holidays(calendar: str, subdivision: str | None, year: int) -> Mapping[date, str]:
    try:
        found = holidays_lib.country_holidays(calendar, subdiv=subdivision, years=year)
    except NotImplementedError:  # a country the package does not know: no holidays to add
        return {}
    return dict(found.items())


def calendar_subdivisions(calendar: str) -> tuple[str, ...]:
    """The subdivision codes the holidays package knows for a country (US states, ES regions...)."""
    return _calendar_subdivisions(calendar.upper())


@lru_cache(maxsize=512)
def _calendar_subdivisions(calendar: str) -> tuple[str, ...]:
    try:
        return tuple(holidays_lib.country_holidays(calendar).subdivisions)
    except NotImplementedError:
        return ()


def _check_calendar(calendar: str, where: str) -> None:
    if calendar == RECIPIENT_CALENDAR:
        return
    try:
        holidays_lib.country_holidays(calendar)
    except NotImplementedError as exc:
        raise RulesError(f"{where}: the holidays package has no calendar {calendar!r}") from exc


# -- parsing ----------------------------------------------------------------------------------------
_TIME = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(text: str, where: str) -> int:
    match = _TIME.match(text.strip())
    if not match:
        raise RulesError(f"{where}: {text!r} is not a time HH:MM")
    value = int(match.group(1)) * 60 + int(match.group(2))
    if value > 1440:
        raise RulesError(f"{where}: {text!r} is after 24:00")
    return value


def _window(text: Any, where: str) -> Window:
    if not isinstance(text, str) or text.count("-") != 1:
        raise RulesError(f"{where}: a window is 'HH:MM-HH:MM', got {text!r}")
    start_text, end_text = text.split("-")
    start, end = _minutes(start_text, where), _minutes(end_text, where)
    if start >= end:
        raise RulesError(f"{where}: window {text!r} ends before it starts (windows stay within one day)")
    return Window(start, end)


def _day_keys(key: str, where: str) -> list[int]:
    key = key.strip().lower()
    if key == "daily":
        return list(range(7))
    if "-" in key:
        first, last = key.split("-", 1)
        if first not in WEEKDAYS or last not in WEEKDAYS or WEEKDAYS.index(first) > WEEKDAYS.index(last):
            raise RulesError(f"{where}: {key!r} is not a weekday range like mon-fri")
        return list(range(WEEKDAYS.index(first), WEEKDAYS.index(last) + 1))
    if key not in WEEKDAYS:
        raise RulesError(f"{where}: {key!r} is not a weekday (mon..sun, mon-fri, daily)")
    return [WEEKDAYS.index(key)]


def parse_windows(spec: Any, where: str, *, require_every_day: bool = True) -> tuple[tuple[Window, ...], ...]:
    """``{"mon-fri": "09:00-21:00", "sat": ["10:00-12:00", "14:00-17:00"], "sun": "off"}`` → per weekday."""
    if not isinstance(spec, Mapping) or not spec:
        raise RulesError(f"{where}: windows must be a mapping of weekdays to 'HH:MM-HH:MM' or 'off'")
    days: list[tuple[Window, ...] | None] = [None] * 7
    for key, value in spec.items():
        here = f"{where}.{key}"
        if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
            windows: tuple[Window, ...] = ()
        elif isinstance(value, str):
            windows = (_window(value, here),)
        elif isinstance(value, list) and value:
            windows = tuple(sorted((_window(item, here) for item in value), key=lambda window: window.start))
            for before, after in zip(windows, windows[1:], strict=False):
                if after.start < before.end:
                    raise RulesError(f"{here}: windows {before} and {after} overlap")
        else:
            raise RulesError(f"{here}: expected 'HH:MM-HH:MM', a list of them, or 'off', got {value!r}")
        for weekday in _day_keys(str(key), here):
            if days[weekday] is not None:
                raise RulesError(f"{where}: {DAY_NAMES[weekday]} is given twice")
            days[weekday] = windows
    missing = [DAY_NAMES[weekday] for weekday, windows in enumerate(days) if windows is None]
    if missing and require_every_day:
        raise RulesError(f"{where}: no windows for {', '.join(missing)} (say 'off' for a day off)")
    return tuple(windows if windows is not None else () for windows in days)


def _only(data: Mapping[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise RulesError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise RulesError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    missing = required - set(data)
    if missing:
        raise RulesError(f"{where}: missing field(s) {', '.join(sorted(missing))}")


def parse_holidays(spec: Any, where: str, *, default_calendar: str | None = None) -> HolidayPolicy | None:
    if spec is None or spec is False:
        return None
    if spec is True:
        if default_calendar is None:
            raise RulesError(f"{where}: say which calendar (holidays: {{calendar: XX}})")
        spec = {"calendar": default_calendar}
    _only(spec, {"calendar", "subdivision", "when_subdivision_unknown"}, {"calendar"}, where)
    calendar = str(spec["calendar"]).upper() if spec["calendar"] != RECIPIENT_CALENDAR else RECIPIENT_CALENDAR
    _check_calendar(calendar, where)
    subdivision = spec.get("subdivision")
    known = _calendar_subdivisions(calendar) if calendar != RECIPIENT_CALENDAR else ()
    if subdivision is not None and str(subdivision) not in known:
        raise RulesError(f"{where}: {calendar} has no subdivision {subdivision!r} in the holidays package")
    unknown = spec.get("when_subdivision_unknown", "national")
    if isinstance(unknown, list):
        bad = [str(item) for item in unknown if str(item) not in known]
        if bad:
            raise RulesError(f"{where}: {calendar} has no subdivision(s) {', '.join(bad)} in the holidays package")
        unknown = tuple(str(item) for item in unknown)
    elif unknown not in ("national", "all"):
        raise RulesError(f"{where}: when_subdivision_unknown is 'national', 'all' or a list, got {unknown!r}")
    return HolidayPolicy(calendar, str(subdivision) if subdivision is not None else None, unknown)


def _source(spec: Any, where: str) -> Source:
    _only(spec, {"kind", "citation", "url"}, {"kind", "citation"}, where)
    if spec["kind"] not in SOURCE_KINDS:
        raise RulesError(f"{where}.kind: one of {', '.join(SOURCE_KINDS)}, got {spec['kind']!r}")
    url = spec.get("url")
    if url is not None and not str(url).startswith(("https://", "http://")):
        raise RulesError(f"{where}.url: not a URL: {url!r}")
    return Source(spec["kind"], str(spec["citation"]).strip(), url)


def _rule(spec: Any, where: str, *, country: str | None) -> Rule:
    _only(
        spec,
        {"id", "name", "windows", "holidays", "zones", "sources", "last_checked", "notes"},
        {"id", "name", "windows", "sources", "last_checked"},
        where,
    )
    rule_id = str(spec["id"])
    if not re.match(r"^[a-z0-9][a-z0-9-]*$", rule_id):
        raise RulesError(f"{where}.id: lower-case letters, digits and dashes, got {rule_id!r}")
    days = parse_windows(spec["windows"], f"{where}.windows")
    if not any(days):
        raise RulesError(f"{where}.windows: every day is off; a rule must allow some time")
    zones = spec.get("zones", [LOCAL])
    if not isinstance(zones, list) or not zones:
        raise RulesError(f"{where}.zones: a list of 'local' and/or IANA zone names")
    for zone in zones:
        if zone != LOCAL and not is_zone(str(zone)):
            raise RulesError(f"{where}.zones: {zone!r} is not a tzdata zone")
    sources = spec["sources"]
    if not isinstance(sources, list) or not sources:
        raise RulesError(f"{where}.sources: every rule cites at least one source")
    checked = spec["last_checked"]
    if isinstance(checked, str):
        try:
            checked = date.fromisoformat(checked)
        except ValueError as exc:
            raise RulesError(f"{where}.last_checked: not a date YYYY-MM-DD: {checked!r}") from exc
    if not isinstance(checked, date):
        raise RulesError(f"{where}.last_checked: not a date YYYY-MM-DD: {checked!r}")
    return Rule(
        id=rule_id,
        name=str(spec["name"]),
        days=days,
        holidays=parse_holidays(spec.get("holidays"), f"{where}.holidays", default_calendar=country),
        zones=tuple(str(zone) for zone in zones),
        sources=tuple(_source(item, f"{where}.sources[{index}]") for index, item in enumerate(sources)),
        last_checked=checked,
        notes=" ".join(str(spec.get("notes", "")).split()),
    )


def parse_rules(data: Any) -> RuleBook:
    """Validate rules data (the parsed YAML) into a :class:`RuleBook`; pure, no I/O."""
    _only(data, {"version", "default", "countries"}, {"version", "default", "countries"}, "rules")
    if data["version"] != 1:
        raise RulesError(f"rules.version: this engine reads version 1, got {data['version']!r}")
    default = _rule(data["default"], "default", country=None)
    seen_ids = {default.id: "default"}
    countries: dict[str, CountryRules] = {}
    for code, spec in (data["countries"] or {}).items():
        where = f"countries.{code}"
        if not re.match(r"^[A-Z]{2}$", str(code)):
            raise RulesError(f"{where}: countries are ISO 3166-1 alpha-2 codes in capitals")
        _only(spec, {"rule", "subdivisions"}, {"rule"}, where)
        rule = _rule(spec["rule"], f"{where}.rule", country=str(code))
        subdivisions: dict[str, Rule] = {}
        label = "subdivision"
        unknown: Literal["all", "none"] = "all"
        if spec.get("subdivisions") is not None:
            sub = spec["subdivisions"]
            _only(sub, {"label", "when_unknown", "rules"}, {"rules"}, f"{where}.subdivisions")
            label = str(sub.get("label", label))
            when_unknown = sub.get("when_unknown", "all")
            if when_unknown not in ("all", "none"):
                raise RulesError(f"{where}.subdivisions.when_unknown: 'all' or 'none', got {when_unknown!r}")
            unknown = when_unknown
            for sub_code, sub_spec in (sub["rules"] or {}).items():
                subdivisions[str(sub_code)] = _rule(sub_spec, f"{where}.subdivisions.rules.{sub_code}", country=str(code))
        for found in (rule, *subdivisions.values()):
            if found.id in seen_ids:
                raise RulesError(f"{where}: rule id {found.id!r} is used twice (also in {seen_ids[found.id]})")
            seen_ids[found.id] = where
        countries[str(code)] = CountryRules(str(code), rule, label, subdivisions, unknown)
    return RuleBook(default=default, countries=countries, version=1)


def parse_rules_text(text: str) -> RuleBook:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"rules: not valid YAML: {exc}") from exc
    return parse_rules(data)


@lru_cache(maxsize=1)
def load_rules() -> RuleBook:
    """The packaged ``rules.yaml`` (read once per process; the engine itself never reads files)."""
    text = importlib.resources.files("services.scheduler.quiet_hours").joinpath("rules.yaml").read_text("utf-8")
    return parse_rules_text(text)


# -- minute-interval algebra (per weekday, wall-clock) -------------------------------------------------
def _intervals(windows: Iterable[Window]) -> list[Interval]:
    return [(window.start, window.end) for window in windows]


def intersect_intervals(first: Iterable[Interval], second: Iterable[Interval]) -> list[Interval]:
    a, b = sorted(first), sorted(second)
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _outside(inner: Iterable[Interval], outer: Iterable[Interval]) -> list[Interval]:
    """The parts of ``inner`` not covered by ``outer``."""
    left: list[Interval] = []
    covered = sorted(outer)
    for start, end in sorted(inner):
        cursor = start
        for o_start, o_end in covered:
            if o_end <= cursor or o_start >= end:
                continue
            if o_start > cursor:
                left.append((cursor, o_start))
            cursor = max(cursor, o_end)
        if cursor < end:
            left.append((cursor, end))
    return left


def _fmt(intervals: Iterable[Interval]) -> str:
    text = ", ".join(f"{_hhmm(start)}-{_hhmm(end)}" for start, end in intervals)
    return text or "nothing (day off)"


# -- tenant overrides ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TenantOverrides:
    """A tenant's own, stricter quiet hours, keyed by scope.

    Scopes: ``*`` (every recipient), a country (``FR``), or a country and subdivision
    (``US-TX``). Each is a rule intersected with the legal ones, so it can only remove time;
    :func:`parse_tenant_overrides` also refuses one that tries to add time, since a tenant
    writing "Sunday 10:00-18:00" for Texas believes it can send before noon, and should be told.
    """

    rules: Mapping[str, Rule] = field(default_factory=dict)

    def applicable(self, country: str, subdivisions: Iterable[str]) -> list[Rule]:
        found = [self.rules[scope] for scope in ("*", country) if scope in self.rules]
        found += [self.rules[f"{country}-{sub}"] for sub in sorted(set(subdivisions)) if f"{country}-{sub}" in self.rules]
        return found

    def __bool__(self) -> bool:
        return bool(self.rules)


NO_OVERRIDES = TenantOverrides()


def base_days(book: RuleBook, scope: str) -> tuple[str, list[list[Interval]]]:
    """What an override for ``scope`` narrows: (rule ids, allowed wall-clock minutes per weekday)."""
    if scope == "*":
        rules = [book.default]
    else:
        country_code, _, subdivision = scope.partition("-")
        country = book.country(country_code)
        if country is None:
            rules = [book.default]
        else:
            rules = [country.rule]
            if subdivision and subdivision in country.subdivisions:
                rules.append(country.subdivisions[subdivision])
    days = [_intervals(rules[0].days[weekday]) for weekday in range(7)]
    for rule in rules[1:]:
        days = [intersect_intervals(days[weekday], _intervals(rule.days[weekday])) for weekday in range(7)]
    return "+".join(rule.id for rule in rules), days


def parse_tenant_overrides(data: Mapping[str, Any] | None, book: RuleBook | None = None) -> TenantOverrides:
    """Validate a tenant's overrides; raises :class:`LooserOverrideError` for any that adds time.

    ``{"*": {"windows": {"daily": "10:00-19:00"}}, "US-TX": {"windows": {...}, "holidays": true}}``.
    ``windows`` may leave weekdays out: those keep the legal rule as it is. ``holidays: true``
    makes the public holidays of the message's country (or of the scope's country) days off.
    """
    if not data:
        return NO_OVERRIDES
    book = book or load_rules()
    if not isinstance(data, Mapping):
        raise RulesError("tenant overrides: expected a mapping of scope ('*', 'FR', 'US-TX') to an override")
    rules: dict[str, Rule] = {}
    for raw_scope, spec in data.items():
        scope = str(raw_scope).strip().upper()
        where = f"tenant override {scope}"
        if not re.match(r"^(\*|[A-Z]{2}(-[A-Z0-9]{1,3})?)$", scope):
            raise RulesError(f"{where}: scope is '*', a country (FR) or country-subdivision (US-TX)")
        if scope in rules:
            raise RulesError(f"{where}: given twice")
        _only(spec, {"windows", "holidays", "notes"}, set(), where)
        if "windows" not in spec and not spec.get("holidays"):
            raise RulesError(f"{where}: says nothing (give windows and/or holidays: true)")
        base_ids, base = base_days(book, scope)
        if "windows" in spec:
            given = parse_windows(spec["windows"], f"{where}.windows", require_every_day=False)
            listed = {weekday for key in spec["windows"] for weekday in _day_keys(str(key), where)}
            days = tuple(given[weekday] if weekday in listed else tuple(Window(s, e) for s, e in base[weekday]) for weekday in range(7))
        else:
            days = tuple(tuple(Window(s, e) for s, e in base[weekday]) for weekday in range(7))
        looser = [
            f"{DAY_NAMES[weekday]} {_fmt(_outside(_intervals(days[weekday]), base[weekday]))} "
            f"(allowed: {_fmt(base[weekday])})"
            for weekday in range(7)
            if _outside(_intervals(days[weekday]), base[weekday])
        ]
        if looser:
            raise LooserOverrideError(
                f"{where} is looser than the rule it narrows ({base_ids}): it would allow "
                + "; ".join(looser)
                + ". Overrides can only narrow windows or add days off."
            )
        if not any(days):
            raise RulesError(f"{where}: leaves no time in the week; suppress these messages instead of holding them forever")
        country = None if scope == "*" else scope[:2]
        holiday_spec = spec.get("holidays")
        if holiday_spec is True:
            holiday_spec = {"calendar": country or RECIPIENT_CALENDAR, "when_subdivision_unknown": "national"}
        rules[scope] = Rule(
            id=f"tenant-{'all' if scope == '*' else scope.lower()}",
            name=f"tenant override ({scope})",
            days=days,
            holidays=parse_holidays(holiday_spec, f"{where}.holidays", default_calendar=country),
            sources=(Source("self-regulation", "tenant setting"),),
            notes=str(spec.get("notes", "")),
        )
    return TenantOverrides(rules)
