"""Sending by template: a request with ``template_id`` becomes a request with its rendered body.

Pure: the stored templates and the recipients' contacts are passed in (ingest's repository
loads them for a whole batch, one query each). The renderer is the campaigns' one
(shared/templates.py), so a template reads the same in a campaign and in a single send:

- the variant is the contact's language, else the number's country's (``COUNTRY_LANGUAGE``),
  else the template's default language;
- ``{{first_name}}``, ``{{attributes.x}}``… are the contact's fields (a number that is not a
  contact has none: their defaults are used), ``{{values.x}}`` the request's ``values``; a
  ``values`` placeholder without a default that the request does not give is refused
  (``template_variable_missing``);
- a marketing template gets the opt-out line in that language unless its text has one;
- ``type`` defaults to the template's purpose; another one is refused (``template_type_mismatch``):
  a marketing text must never skip consent, quiet hours and caps as transactional;
- ``sender`` defaults to the template's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.ingest.domain import Rejection
from shared.contracts import MessageRequest
from shared.phones import PhoneError, parse_e164
from shared.statuses import MessageType
from shared.templates import (
    COUNTRY_LANGUAGE,
    Template,
    TemplateError,
    choose_language,
    render,
    required_values,
    with_values,
)


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """One template as a send asks for it: ``template`` is None when the asked version does not exist."""

    template_id: uuid.UUID
    current_version: int
    archived: bool
    version: int | None
    template: Template | None
    dlt_template_id: str | None = None  # India DLT content template id of that version (docs/senders.md)


TemplateKey = tuple[uuid.UUID, int | None]  # (template id, the version asked for; None: the current one)


@dataclass(frozen=True, slots=True)
class RenderedSend:
    request: MessageRequest  # the request with its rendered body, type and sender
    template_id: uuid.UUID
    version: int


def template_key(request: MessageRequest) -> TemplateKey:
    assert request.template_id is not None
    return request.template_id, request.template_version


def send_language(contact: Mapping[str, Any] | None, country: str | None) -> str | None:
    """The language a send is rendered in: the contact's, else the number's country's (None: the template's default)."""
    language = (contact or {}).get("language")
    return language or COUNTRY_LANGUAGE.get(country or "")


def render_send(
    request: MessageRequest,
    stored: StoredTemplate | None,
    contact: Mapping[str, Any] | None,
    *,
    allowed_types: Any,
    smart_encoding: bool = True,
) -> RenderedSend:
    """The request with its template rendered for its recipient; raise :class:`Rejection` if it cannot be."""
    assert request.template_id is not None
    if stored is None:
        raise Rejection("template_not_found", "no template with this id",
                        [{"loc": "template_id", "code": "template_not_found", "msg": str(request.template_id)}])
    if stored.archived:
        raise Rejection("template_archived", "this template is archived: it takes no new sends",
                        [{"loc": "template_id", "code": "template_archived", "msg": str(request.template_id)}])
    if stored.template is None or stored.version is None:
        raise Rejection(
            "template_version_not_found",
            f"the template has no version {request.template_version} (its current version is {stored.current_version})",
            [{"loc": "template_version", "code": "template_version_not_found", "msg": f"at most {stored.current_version}"}],
        )
    template = stored.template
    purpose = MessageType(template.purpose)
    if "type" in request.model_fields_set and request.type is not purpose:
        raise Rejection(
            "template_type_mismatch",
            f"the template is {purpose.value}: a message sent with it is {purpose.value} (leave type out)",
            [{"loc": "type", "code": "template_type_mismatch", "msg": f"the template's purpose is {purpose.value}"}],
        )
    try:
        phone = parse_e164(request.to, allowed_types)
    except PhoneError as exc:
        raise Rejection(exc.code, str(exc), [{"loc": "to", "code": exc.code, "msg": str(exc)}]) from None
    language = send_language(contact, phone.country)
    variant = choose_language(template.variants, language, template.default_language)
    given = request.values or {}
    missing = [k for k in required_values(template.variants[variant]) if k not in given]
    if missing:
        raise Rejection(
            "template_variable_missing",
            f"the template's {variant!r} text needs {', '.join(f'values.{k}' for k in missing)} (no default)",
            [{"loc": f"values.{k}", "code": "template_variable_missing", "msg": "required by the template"} for k in missing],
        )
    fields = with_values(contact, given)
    fields.setdefault("country", phone.country)
    try:
        rendered = render(template, fields, smart=smart_encoding, language=language)
    except TemplateError as exc:
        raise Rejection(exc.code, str(exc), [{"loc": "template_id", "code": exc.code, "msg": str(exc)}]) from None
    updated = request.model_copy(update={"body": rendered.text, "type": purpose, "sender": request.sender or (None if request.sender_pool else template.sender)})
    return RenderedSend(updated, stored.template_id, stored.version)
