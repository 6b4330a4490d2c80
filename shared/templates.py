"""Message templates: ``{{field|default}}`` placeholders, per-language variants, opt-out text.

Pure, shared by ingest's audience API and the scheduler's journeys.

The renderer is one regular expression and a dictionary look-up: no expressions, no filters,
no loops, no attribute access on Python objects, so a template runs no code. A substituted
value is never scanned again (a first name of ``{{last_name}}`` stays literal text), each
value is cut at :data:`MAX_VALUE` characters and the rendered text at :data:`MAX_RENDERED`.

Fields: ``first_name``, ``last_name``, ``country``, ``language``, ``time_zone``,
``attributes.<key>`` and ``values.<key>`` (the per-send values of ``POST /v1/messages`` with a
``template_id``; campaigns and journeys have none, so there a ``values`` placeholder renders its
default). Unlike segment filters, bare attribute names are refused here: a typo
(``{{frist_name|there}}``) would otherwise render the default to every contact unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from shared.sms.encoding import SegmentInfo, analyse

MAX_BODY = 1600  # characters of a variant as written (the API's message limit)
MAX_RENDERED = 1600  # characters once rendered, opt-out text included
MAX_VALUE = 200  # characters one placeholder may insert
MAX_DEFAULT = 100
MAX_VARIANTS = 30

CONTACT_FIELDS = ("first_name", "last_name", "country", "language", "time_zone")
PLACEHOLDER = re.compile(
    r"\{\{\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*(?:\|(?P<default>[^{}|]*))?\}\}"
)
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-(?:[A-Z]{2}|[0-9]{3}|[A-Z][a-z]{3}))?$")
SENDER_RE = re.compile(r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")

# The opt-out instruction per language, and the keywords that count as one already in a text.
# Every instruction is GSM-7 (no á, í, ó, ú), so appending it never turns a message into UCS-2.
# The keywords are also what an inbound-SMS handler should treat as an opt-out.
OPT_OUT: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": ("Reply STOP to opt out", ("STOP", "UNSUBSCRIBE")),
    "es": ("Responde BAJA para darte de baja", ("BAJA", "STOP")),
    "fr": ("Répondez STOP pour vous désabonner", ("STOP",)),
    "de": ("Antworte STOP zum Abmelden", ("STOP",)),
    "pt": ("Responda SAIR para cancelar", ("SAIR", "PARAR", "STOP")),
    "it": ("Rispondi STOP per annullare l'iscrizione", ("STOP",)),
    "nl": ("Antwoord STOP om af te melden", ("STOP",)),
    "ca": ("Respon BAIXA per donar-te de baixa", ("BAIXA", "STOP")),
}
DEFAULT_OPT_OUT_LANGUAGE = "en"

VALUES = "values"  # the prefix of per-send values: {{values.code}}

Purpose = Literal["marketing", "transactional"]


class TemplateError(ValueError):
    def __init__(self, code: str, message: str, loc: str = "", position: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.loc = loc
        self.position = position

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loc": self.loc, "code": self.code, "msg": str(self)}
        if self.position is not None:
            out["position"] = self.position
        return out


@dataclass(frozen=True, slots=True)
class Template:
    purpose: Purpose
    default_language: str
    variants: Mapping[str, str]
    sender: str | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    language: str  # the variant used
    sender: str | None
    opt_out_appended: bool
    missing: tuple[str, ...]  # fields the contact lacks (their default, or nothing, was used)
    info: SegmentInfo = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.info.text,
            "language": self.language,
            "sender": self.sender,
            "opt_out_appended": self.opt_out_appended,
            "missing_fields": list(self.missing),
            "encoding": self.info.encoding,
            "segments": self.info.segments,
            "characters": self.info.characters,
            "units": self.info.units,
        }


def primary(language: str | None) -> str | None:
    return language.split("-", 1)[0].lower() if language else None


def validate(template: Template) -> list[TemplateError]:
    """Every problem of a template: languages, sender, placeholders, lengths."""
    errors: list[TemplateError] = []
    if template.purpose not in ("marketing", "transactional"):
        errors.append(TemplateError("invalid_purpose", "purpose is marketing or transactional", "purpose"))
    if template.sender is not None and not SENDER_RE.match(template.sender):
        errors.append(TemplateError("invalid_sender", "a sender is a name of up to 11 letters, digits, spaces, . _ - or a number", "sender"))
    if not template.variants:
        errors.append(TemplateError("no_variants", "give at least one variant", "variants"))
    if len(template.variants) > MAX_VARIANTS:
        errors.append(TemplateError("too_many_variants", f"at most {MAX_VARIANTS} variants", "variants"))
    if template.default_language not in template.variants:
        errors.append(
            TemplateError("default_language_missing", "default_language must name one of the variants", "default_language")
        )
    for language, body in template.variants.items():
        loc = f"variants.{language}"
        if not LANGUAGE_RE.match(language):
            errors.append(TemplateError("invalid_language", f"{language!r} is not a BCP-47 tag like es or pt-BR", loc))
        if not isinstance(body, str) or not body.strip():
            errors.append(TemplateError("empty_variant", "a variant needs some text", loc))
            continue
        if len(body) > MAX_BODY:
            errors.append(TemplateError("variant_too_long", f"a variant has at most {MAX_BODY} characters", loc))
        errors.extend(placeholder_errors(body, loc, extra_prefixes=(VALUES,)))
    return errors


def placeholder_errors(body: str, loc: str, extra_prefixes: tuple[str, ...] = ()) -> list[TemplateError]:
    """Problems of the placeholders in ``body``; ``extra_prefixes`` allows more fields (journeys
    render ``{{trigger.<property>}}`` from the event that started them)."""
    errors = []
    for m in PLACEHOLDER.finditer(body):
        name, default = m.group("name"), m.group("default")
        extra = any(name.startswith(f"{p}.") and name.count(".") == 1 for p in extra_prefixes)
        if name not in CONTACT_FIELDS and not extra and not (name.startswith("attributes.") and name.count(".") == 1):
            hint = f"; an attribute is {{{{attributes.{name}}}}}" if "." not in name else ""
            more = "".join(f", {p}.<key>" for p in extra_prefixes)
            errors.append(
                TemplateError(
                    "unknown_field", f"unknown field {name!r} (fields: {', '.join(CONTACT_FIELDS)}, attributes.<key>{more}){hint}",
                    loc, m.start(),
                )
            )
        if default is not None and len(default) > MAX_DEFAULT:
            errors.append(TemplateError("default_too_long", f"a default has at most {MAX_DEFAULT} characters", loc, m.start()))
    rest = PLACEHOLDER.sub(lambda m: " " * len(m.group(0)), body)
    for marker in ("{{", "}}", "{%", "%}"):
        at = rest.find(marker)
        if at >= 0:
            errors.append(
                TemplateError("invalid_placeholder", "placeholders are written {{field}} or {{field|default}}", loc, at)
            )
            break
    return errors


def choose_language(variants: Mapping[str, str], language: str | None, default: str) -> str:
    """The variant for ``language``: exact tag, then its primary language, then ``default``."""
    if language:
        if language in variants:
            return language
        base = primary(language)
        if base in variants:
            return base  # type: ignore[return-value]
        for tag in sorted(variants):  # "pt" asked, only "pt-BR" written
            if primary(tag) == base:
                return tag
    return default


def has_opt_out(text: str, language: str | None) -> bool:
    """Whether ``text`` (placeholders removed) already tells how to opt out, in its language or English."""
    bare = PLACEHOLDER.sub(" ", text)
    keywords = set(OPT_OUT.get(primary(language) or "", ("", ()))[1]) | set(OPT_OUT["en"][1])
    return any(re.search(rf"(?<![A-Za-z]){re.escape(k)}(?![A-Za-z])", bare) for k in keywords)


def opt_out_text(contact_language: str | None, variant_language: str) -> str:
    """In the contact's language when known, else the message's, else English."""
    for language in (primary(contact_language), primary(variant_language), DEFAULT_OPT_OUT_LANGUAGE):
        if language in OPT_OUT:
            return OPT_OUT[language][0]
    raise AssertionError("unreachable")


# The language of an opt-out line for a number that is not a contact with a language: its
# country's main language where OPT_OUT has it (else English).
COUNTRY_LANGUAGE = {
    "ES": "es", "MX": "es", "AR": "es", "CO": "es", "CL": "es", "PE": "es", "FR": "fr", "BE": "fr", "LU": "fr",
    "DE": "de", "AT": "de", "CH": "de", "PT": "pt", "BR": "pt", "IT": "it", "NL": "nl", "AD": "ca",
}


def opt_out_line(text: str, contact_language: str | None, country: str | None) -> str | None:
    """The opt-out instruction a raw marketing text needs (None: it has one already)."""
    language = primary(contact_language) or COUNTRY_LANGUAGE.get(country or "", DEFAULT_OPT_OUT_LANGUAGE)
    if has_opt_out(text, language):
        return None
    return opt_out_text(contact_language, language)


def field_value(contact: Mapping[str, Any], name: str) -> str | None:
    """A placeholder's value; a dotted name other than ``attributes.x`` is looked up as written."""
    if name.startswith("attributes."):
        attributes = contact.get("attributes") or {}
        value = attributes.get(name.split(".", 1)[1]) if isinstance(attributes, Mapping) else None
    else:
        value = contact.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.15g}"
    elif isinstance(value, (int, Decimal, str)):
        text = str(value)
    else:
        return None  # lists, objects: not renderable
    text = _CONTROL.sub("", text)
    return text[:MAX_VALUE] or None


def required_values(body: str) -> list[str]:
    """The per-send values ``body`` needs: its ``{{values.<key>}}`` placeholders without a default, in order."""
    names = [m.group("name").split(".", 1)[1] for m in PLACEHOLDER.finditer(body)
             if m.group("default") is None and m.group("name").startswith(f"{VALUES}.") and m.group("name").count(".") == 1]
    return list(dict.fromkeys(names))


def with_values(contact: Mapping[str, Any] | None, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """What placeholders read for one send: the contact's fields and ``values.<key>``."""
    fields: dict[str, Any] = dict(contact or {})
    for key, value in (values or {}).items():
        fields[f"{VALUES}.{key}"] = value
    return fields


def render(template: Template, contact: Mapping[str, Any], *, smart: bool = True, language: str | None = None) -> Rendered:
    """Render the contact's variant; raise :class:`TemplateError` if the text grows too long.

    ``language``: the language to pick the variant (and the opt-out line) by, when it is not the
    contact's own (a number that is not a contact: its country's language)."""
    wanted = language if language is not None else contact.get("language")
    language = choose_language(template.variants, wanted, template.default_language)
    body = template.variants[language]
    missing: list[str] = []

    def substitute(m: re.Match[str]) -> str:
        value = field_value(contact, m.group("name"))
        if value is None:
            missing.append(m.group("name"))
            return m.group("default") or ""
        return value

    text = PLACEHOLDER.sub(substitute, body)
    appended = False
    if template.purpose == "marketing" and not has_opt_out(body, language):
        text = text.rstrip() + "\n" + opt_out_text(wanted, language)
        appended = True
    if len(text) > MAX_RENDERED:
        raise TemplateError("rendered_too_long", f"the rendered text has {len(text)} characters, at most {MAX_RENDERED}", "text")
    info = analyse(text, smart=smart)
    return Rendered(text, language, template.sender, appended, tuple(dict.fromkeys(missing)), info)


SAMPLE_CONTACT: dict[str, Any] = {
    "first_name": "Alex",
    "last_name": "Garcia",
    "country": "ES",
    "language": None,
    "time_zone": "Europe/Madrid",
    "attributes": {},
}
