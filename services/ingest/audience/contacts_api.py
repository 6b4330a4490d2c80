"""The audience HTTP API: contacts (with import and consent), segments and templates.

Every route is tenant-scoped by the API key: another tenant's contact, segment or template
answers 404, as an unknown id does. Scopes: ``contacts:read`` for reads and previews,
``contacts:write`` for changes.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.ingest import deps
from services.ingest.audience import segments as seg
from services.ingest.audience.contacts_repo import (
    AudienceRepository,
    ContactExists,
    TemplateArchived,
    TemplateNameTaken,
    TemplateVersionConflict,
)
from services.ingest.audience.erasure import ERASING_SERVICES, ErasureAnswer, ErasureNotPublished, Erasures
from services.ingest.audience.importer import RowError, check_contact, run_import
from services.ingest.audience.preview_gate import gate_for
from services.ingest.audience.subject_access import ExportNotPublished, Exports, ExportStatus
from services.ingest.audience.templates import SAMPLE_CONTACT, Template, TemplateError, render, validate
from shared.api import ApiError, error_body, principal_dependency
from shared.auth import Principal
from shared.contracts import utcnow
from shared.phones import PhoneError, parse_e164
from shared.senders import named_problem

IMPORT_ROWS = Counter("herald_contact_import_rows_total", "Rows of contact imports, by result", ["result"])
CONSENT_CHANGES = Counter("herald_consent_records_total", "Consent records written", ["purpose", "granted"])

MAX_PAGE = 1000
IMPORT_MEDIA_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "application/json": "auto-json",
}

AttributeValue = str | int | float | bool | None


class ContactBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone: str = Field(max_length=40, description="E.164, e.g. +34600123456", examples=["+34600123456"])
    first_name: str | None = None
    last_name: str | None = None
    attributes: dict[str, AttributeValue] | None = Field(
        None, description="Flat key: value; strings, numbers, booleans, dates as ISO 8601 strings"
    )
    tags: list[str] | None = None
    language: str | None = Field(None, description="BCP-47, e.g. es or pt-BR", examples=["es"])
    country: str | None = Field(None, description="ISO 3166-1 alpha-2; derived from the number when absent")
    time_zone: str | None = Field(None, description="IANA name, e.g. Europe/Madrid")
    last_activity_at: str | None = Field(None, description="ISO 8601 date-time (UTC if no offset)")


class ContactPatch(ContactBody):
    phone: str | None = Field(None, max_length=40)  # type: ignore[assignment]


class Proof(BaseModel):
    model_config = ConfigDict(extra="forbid")
    form_id: str | None = Field(None, max_length=128, description="The form or flow where consent was given")
    ip: IPv4Address | IPv6Address | None = Field(None, description="The address the consent came from")
    text_shown: str | None = Field(None, max_length=2000, description="The exact wording the person agreed to")
    user_agent: str | None = Field(None, max_length=512)


class ConsentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: Literal["marketing", "transactional"]
    granted: bool = Field(description="true: consent given; false: withdrawn (opt-out)")
    source: str = Field(min_length=1, max_length=64, description="web_form, sms_keyword, call_centre, import…")
    occurred_at: AwareDatetime | None = Field(None, description="When the person said so; default now")
    proof: Proof | None = Field(None, description="Required to grant: form_id or text_shown")


class ErasureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(max_length=40, description="The number to erase, E.164")


class SubjectAccessBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str | None = Field(None, max_length=40, description="The number whose data to export, E.164")
    contact_id: str | None = Field(None, max_length=64, description="...or the contact whose number it is")


class FilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: str = Field(max_length=100_000, examples=['country = "ES" and "vip" in tags'])


class SegmentBody(FilterBody):
    name: str = Field(min_length=1, max_length=100)


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    purpose: Literal["marketing", "transactional"] = "marketing"
    sender: str | None = Field(None, description="Alphanumeric sender id (up to 11) or a number", examples=["Acme"])
    dlt_template_id: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
        description="India DLT: the content template id this template is registered under (docs/senders.md)")
    default_language: str = Field(examples=["en"])
    variants: dict[str, str] = Field(
        description="Text per language; placeholders {{first_name|there}}, {{attributes.plan}}",
        examples=[{"en": "Hi {{first_name|there}}, 20% off today", "es": "Hola {{first_name|}}: 20% hoy"}],
    )


class SampleContact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first_name: str | None = None
    last_name: str | None = None
    language: str | None = None
    country: str | None = None
    time_zone: str | None = None
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)


class PreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: str | None = Field(None, description="Render for this contact")
    contact: SampleContact | None = Field(None, description="…or for these sample fields (default: a sample contact)")


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(uuid.UUID(value).bytes).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> uuid.UUID | None:
    if not cursor:
        return None
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned", [{"loc": "query.cursor", "code": "invalid_cursor", "msg": "unknown cursor"}]) from None


def _id(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, f"{what}_not_found", f"no {what} with this id") from None


def _field_errors(errors: list[RowError]) -> ApiError:
    details = [{"loc": f"body.{e.field}" if e.field else "body", "code": e.code, "msg": str(e)} for e in errors]
    code = errors[0].code if len({e.code for e in errors}) == 1 else "validation_failed"
    return ApiError(422, code, str(errors[0]) if len(errors) == 1 else "contact is not valid", details)


def _segment_error(exc: seg.SegmentError) -> ApiError:
    return ApiError(422, "segment_invalid", str(exc), [exc.detail()])


def _parse_filter(text: str) -> seg.Node:
    try:
        return seg.parse(text)
    except seg.SegmentError as exc:
        raise _segment_error(exc) from None


router = APIRouter()
reader = Depends(principal_dependency("contacts:read"))
writer = Depends(principal_dependency("contacts:write"))
errors: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 422: {}}


def repo(request: Request) -> AudienceRepository:
    return AudienceRepository(request.app.state.pool, deps.erasure_keyring(request))


def erasures(request: Request) -> Erasures:
    keys = deps.erasure_keyring(request)  # erased numbers' hashes (shared/erasure.py)
    if not keys.enabled:
        raise ApiError(503, "erasure_key_missing",
                       "erasure needs HERALD_ERASURE_KEYS (the key of the kept hash); nothing was erased")
    return Erasures(request.app.state.pool, request.app.state.publisher, keys)


async def _erase(request: Request, principal: Principal, phone: str, contact_id: uuid.UUID | None) -> ErasureAnswer:
    service = erasures(request)
    try:
        return await service.erase(principal.tenant_id, phone, requested_by=principal.key_id, now=utcnow(),
                                   contact_id=contact_id)
    except ErasureNotPublished as exc:  # nothing erased yet: a retry does it all
        raise ApiError(503, "broker_unavailable", "could not publish the erasure: retry") from exc

# contacts ---------------------------------------------------------------------------------


@router.post("/v1/contacts", status_code=201, tags=["contacts"], responses={**errors, 409: {}})
async def create_contact(body: ContactBody, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Create a contact. A phone number already present answers 409 with the contact's id."""
    allowed = deps.ingest_settings(request).allowed_number_types
    contact, problems = check_contact(body.model_dump(exclude_unset=True), allowed_types=allowed)
    if problems:
        raise _field_errors(problems)
    try:
        return await repo(request).create_contact(principal.tenant_id, contact)
    except ContactExists as exc:
        raise ApiError(
            409, "contact_exists", "a contact with this phone number exists",
            [{"loc": "body.phone", "code": "contact_exists", "msg": "phone taken", "contact_id": str(exc.contact_id)}],
        ) from None


@router.get("/v1/contacts", tags=["contacts"], responses=errors)
async def list_contacts(
    request: Request,
    principal: Principal = reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    phone: Annotated[str | None, Query(max_length=40, description="Only the contact with this number")] = None,
) -> dict[str, Any]:
    """A page of contacts; pass ``next_cursor`` back as ``cursor`` for the next one."""
    e164 = None
    if phone is not None:
        try:
            e164 = parse_e164(phone, allowed_types=None).e164
        except PhoneError as exc:
            raise ApiError(422, exc.code, str(exc), [{"loc": "query.phone", "code": exc.code, "msg": str(exc)}]) from None
    page = await repo(request).list_contacts(principal.tenant_id, after=decode_cursor(cursor), limit=limit, phone=e164)
    next_cursor = encode_cursor(page[-1]["contact_id"]) if len(page) == limit else None
    return {"contacts": page, "next_cursor": next_cursor}


@router.post("/v1/contacts/import", tags=["contacts"], responses={**errors, 413: {}, 415: {}})
async def import_contacts(
    request: Request,
    principal: Principal = writer,
    format: Annotated[Literal["csv", "ndjson", "json"] | None, Query(description="Default: from Content-Type")] = None,
) -> JSONResponse:
    """Upsert contacts by phone from CSV, NDJSON or a JSON array, streamed (up to 1,000,000 rows).

    Bad rows are listed (row, field, code) and skipped; the rest is imported. CSV columns:
    phone, first_name, last_name, language, country, time_zone, tags (separated by , ; or |),
    last_activity_at, and attributes.<key>[:string|number|bool|date]. Empty cells leave a
    field unchanged.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = format or IMPORT_MEDIA_TYPES.get(media_type)
    if fmt is None:
        raise ApiError(
            415, "unsupported_media_type",
            "send text/csv, application/x-ndjson or application/json (or ?format=csv|ndjson|json)",
        )
    result = await run_import(
        request.stream(), fmt, partial(repo(request).upsert_contacts, principal.tenant_id),
        allowed_types=deps.ingest_settings(request).allowed_number_types,
    )
    IMPORT_ROWS.labels("created").inc(result.created)
    IMPORT_ROWS.labels("updated").inc(result.updated)
    IMPORT_ROWS.labels("rejected").inc(result.rejected)
    if result.aborted is None:
        return JSONResponse(result.as_dict())
    a = result.aborted
    status = 413 if a.code == "import_too_large" else 422
    detail = {"loc": "body", "code": a.code, "msg": str(a), "row": a.row}
    imported = result.created + result.updated
    message = f"{a}; {imported} rows before it were imported" if imported else str(a)
    return JSONResponse(error_body(a.code, message, [detail]) | {"import": result.as_dict()}, status_code=status)


@router.get("/v1/contacts/{contact_id}", tags=["contacts"], responses=errors)
async def get_contact(
    contact_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = reader
) -> dict[str, Any]:
    contact = await repo(request).get_contact(principal.tenant_id, _id(contact_id, "contact"))
    if contact is None:
        raise ApiError(404, "contact_not_found", "no contact with this id")
    return contact


@router.patch("/v1/contacts/{contact_id}", tags=["contacts"], responses={**errors, 409: {}})
async def update_contact(
    contact_id: Annotated[str, Path(max_length=64)], body: ContactPatch, request: Request, principal: Principal = writer
) -> dict[str, Any]:
    """Change the fields given; ``null`` clears one. Attributes are merged (``null`` removes a key); tags are replaced."""
    cid = _id(contact_id, "contact")
    allowed = deps.ingest_settings(request).allowed_number_types
    contact, problems = check_contact(body.model_dump(exclude_unset=True), allowed_types=allowed, partial=True)
    if problems:
        raise _field_errors(problems)
    r = repo(request)
    if "country" in contact.values and contact.values["country"] is None and contact.phone is None:
        current = await r.get_contact(principal.tenant_id, cid)  # a cleared country is the number's
        if current is None:
            raise ApiError(404, "contact_not_found", "no contact with this id")
        contact.country_of_phone = parse_e164(current["phone"], allowed_types=None).country
    try:
        updated = await r.update_contact(principal.tenant_id, cid, contact)
    except ContactExists as exc:
        raise ApiError(
            409, "contact_exists", "another contact has this phone number",
            [{"loc": "body.phone", "code": "contact_exists", "msg": "phone taken", "contact_id": str(exc.contact_id)}],
        ) from None
    if updated is None:
        raise ApiError(404, "contact_not_found", "no contact with this id")
    return updated


@router.delete("/v1/contacts/{contact_id}", status_code=204, tags=["contacts"], responses=errors)
async def erase_contact(
    contact_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = writer
) -> Response:
    """Erase the contact and its number everywhere (as ``POST /v1/erasures``): its data and consent
    history are deleted at once; only a keyed hash of the number is kept, so the number is never
    sent marketing again unless it opts in anew. Other services erase their rows shortly after."""
    cid = _id(contact_id, "contact")
    phone = await erasures(request).contact_phone(principal.tenant_id, cid)
    if phone is None:
        raise ApiError(404, "contact_not_found", "no contact with this id")
    await _erase(request, principal, phone, cid)
    return Response(status_code=204)

# erasure by number ------------------------------------------------------------------------


@router.post("/v1/erasures", status_code=202, tags=["contacts"], responses={**errors, 503: {}})
async def erase_number(body: ErasureBody, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Erase a number, contact or not, from every table that holds it or its texts (docs/data-map.md).

    ingest's tables are erased before the answer (``applied.ingest``: rows per table); the
    scheduler, dispatcher and reports erase theirs from ``herald.erasures.v1`` within seconds
    (``GET /v1/erasures/{id}`` lists each service's audit row). Only a keyed hash of the
    number is kept, as a marketing suppression. Erasing again is harmless."""
    try:
        phone = parse_e164(body.phone, allowed_types=None).e164
    except PhoneError as exc:
        raise ApiError(422, exc.code, str(exc), [{"loc": "body.phone", "code": exc.code, "msg": str(exc)}]) from None
    answer = await _erase(request, principal, phone, None)
    return {"erasure_id": str(answer.erasure_id), "status": "accepted", "applied": {"ingest": answer.counts},
            "pending": list(ERASING_SERVICES)}


@router.get("/v1/erasures/{erasure_id}", tags=["contacts"], responses=errors)
async def erasure_status(
    erasure_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = reader
) -> dict[str, Any]:
    """Which services applied an erasure, when, and how many rows of each table (never the number)."""
    rows = await Erasures(request.app.state.pool, request.app.state.publisher, deps.erasure_keyring(request)).status(
        principal.tenant_id, _id(erasure_id, "erasure"))
    if not rows:
        raise ApiError(404, "erasure_not_found", "no erasure with this id")
    applied = {r["service"]: {"applied_at": r["applied_at"].isoformat(), "counts": r["counts"]} for r in rows}
    return {"erasure_id": erasure_id, "phone_hash": rows[0]["phone_hash"], "requested_by": rows[0]["requested_by"],
            "requested_at": rows[0]["requested_at"].isoformat(), "applied": applied,
            "pending": [s for s in ERASING_SERVICES if s not in applied],
            "complete": all(s in applied for s in ("ingest", *ERASING_SERVICES))}

# subject-access export ---------------------------------------------------------------------

exporter = Depends(principal_dependency("contacts:export"))


def exports(request: Request) -> Exports:
    return Exports(request.app.state.pool, request.app.state.publisher, deps.erasure_keyring(request),
                   deps.ingest_settings(request).subject_access_export_days)


def export_body(export_id: str, status: ExportStatus) -> dict[str, Any]:
    row = status.row
    out: dict[str, Any] = {
        "export_id": export_id, "status": status.state, "requested_by": row["requested_by"],
        "requested_at": row["requested_at"].isoformat(), "expires_at": row["expires_at"].isoformat(),
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }
    if status.assembly is not None:
        out["pending"] = status.assembly.pending
        out["received"] = sorted(status.assembly.services)
        if status.assembly.document is not None:
            out["document"] = status.assembly.document
    else:
        out["removed_at"] = row["removed_at"].isoformat() if row["removed_at"] else None
    return out


@router.post("/v1/subject-access", status_code=202, tags=["contacts"], responses={**errors, 503: {}})
async def request_export(body: SubjectAccessBody, request: Request, principal: Principal = exporter) -> dict[str, Any]:
    """Export everything Herald holds about a number (a subject-access request): contact and
    consent history with proof, suppressions, messages with their statuses and timeline,
    replies, clicks, conversions, journey runs, held messages and claims (docs/data-map.md).

    Give ``phone`` or ``contact_id``. Every service gathers its own tables within seconds;
    ``GET /v1/subject-access/{id}`` answers the document once all have. Needs the
    ``contacts:export`` scope (not a default)."""
    if (body.phone is None) == (body.contact_id is None):
        raise ApiError(422, "validation_failed", "give phone or contact_id (one of them)",
                       [{"loc": "body", "code": "validation_failed", "msg": "phone or contact_id"}])
    service = exports(request)
    if body.contact_id is not None:
        contact_id: uuid.UUID | None = _id(body.contact_id, "contact")
        phone = await service.contact_phone(principal.tenant_id, contact_id)
        if phone is None:
            raise ApiError(404, "contact_not_found", "no contact with this id")
    else:
        try:
            phone = parse_e164(body.phone or "", allowed_types=None).e164
        except PhoneError as exc:
            raise ApiError(422, exc.code, str(exc), [{"loc": "body.phone", "code": exc.code, "msg": str(exc)}]) from None
        contact_id = await service.contact_of(principal.tenant_id, phone)
    try:
        row = await service.request(principal.tenant_id, phone, requested_by=principal.key_id, now=utcnow(),
                                    contact_id=contact_id)
    except ExportNotPublished as exc:
        raise ApiError(503, "broker_unavailable", "could not publish the subject-access request: retry") from exc
    return {"export_id": str(row["export_id"]), "status": "pending", "requested_at": row["requested_at"].isoformat(),
            "expires_at": row["expires_at"].isoformat()}


@router.get("/v1/subject-access/{export_id}", tags=["contacts"], responses=errors)
async def export_status(
    export_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = exporter
) -> dict[str, Any]:
    """An export's state: ``pending`` (``pending`` lists the services still gathering),
    ``complete`` (with ``document``), or ``expired`` / ``erased`` (the number and document were
    removed; who asked and when stay)."""
    status = await exports(request).status(principal.tenant_id, _id(export_id, "export"), utcnow())
    if status is None:
        raise ApiError(404, "export_not_found", "no subject-access export with this id")
    return export_body(export_id, status)

# consent ----------------------------------------------------------------------------------


@router.post("/v1/contacts/{contact_id}/consents", status_code=201, tags=["consent"], responses=errors)
async def record_consent(
    contact_id: Annotated[str, Path(max_length=64)], body: ConsentBody, request: Request, principal: Principal = writer
) -> dict[str, Any]:
    """Grant or withdraw consent for a purpose. Withdrawing marketing consent suppresses the
    number at once; granting it (with proof) lifts suppressions older than the grant."""
    now = datetime.now(UTC)
    occurred_at = body.occurred_at or now
    if occurred_at > now + timedelta(minutes=5):
        raise ApiError(422, "occurred_in_future", "occurred_at is in the future",
                       [{"loc": "body.occurred_at", "code": "occurred_in_future", "msg": "in the future"}])
    proof = body.proof.model_dump(mode="json", exclude_none=True) if body.proof else {}
    if body.granted and not (proof.get("form_id") or proof.get("text_shown")):
        raise ApiError(422, "proof_required", "granting consent needs proof: form_id or text_shown",
                       [{"loc": "body.proof", "code": "proof_required", "msg": "form_id or text_shown"}])
    record = await repo(request).record_consent(
        principal.tenant_id, _id(contact_id, "contact"), purpose=body.purpose, granted=body.granted,
        source=body.source, occurred_at=occurred_at, proof=proof,
    )
    if record is None:
        raise ApiError(404, "contact_not_found", "no contact with this id")
    CONSENT_CHANGES.labels(body.purpose, str(body.granted).lower()).inc()
    return record


@router.get("/v1/contacts/{contact_id}/consents", tags=["consent"], responses=errors)
async def consent_history(
    contact_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: Principal = reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """The current consent per purpose and the history, newest first."""
    cid = _id(contact_id, "contact")
    r = repo(request)
    contact = await r.get_contact(principal.tenant_id, cid)
    if contact is None:
        raise ApiError(404, "contact_not_found", "no contact with this id")
    return {"contact_id": contact["contact_id"], "current": contact["consent"], "history": await r.consent_history(principal.tenant_id, cid, limit)}

# segments ---------------------------------------------------------------------------------


@router.post("/v1/segments/preview", tags=["segments"], responses={**errors, 429: {}, 503: {}})
async def preview_segment(body: FilterBody, request: Request, principal: Principal = reader) -> dict[str, Any]:
    """Check a filter and answer how many contacts match it, with a sample of 10. Previews are
    capped per tenant and per instance (429 with Retry-After over the cap)."""
    node = _parse_filter(body.filter)
    settings = deps.ingest_settings(request)
    gate = gate_for(request.app, settings.segment_preview_concurrency, settings.segment_preview_per_tenant)
    try:
        async with gate.slot(principal.tenant_id):
            count, sample = await repo(request).preview(principal.tenant_id, node)
    except asyncpg.QueryCanceledError:  # the statement timeout
        raise ApiError(503, "segment_timeout", "the filter took too long to evaluate; narrow it") from None
    return {"count": count, "sample": sample, "normalized": seg.normalize(node), "fields": seg.fields_used(node)}


@router.post("/v1/segments", status_code=201, tags=["segments"], responses={**errors, 409: {}})
async def create_segment(body: SegmentBody, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Store a named segment (its filter checked first)."""
    node = _parse_filter(body.filter)
    created = await repo(request).create_segment(principal.tenant_id, body.name, body.filter, seg.normalize(node))
    if created is None:
        raise ApiError(409, "segment_exists", f"a segment named {body.name!r} exists")
    return created


@router.get("/v1/segments", tags=["segments"], responses=errors)
async def list_segments(
    request: Request,
    principal: Principal = reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    page = await repo(request).list_segments(principal.tenant_id, after=decode_cursor(cursor), limit=limit)
    return {"segments": page, "next_cursor": encode_cursor(page[-1]["segment_id"]) if len(page) == limit else None}


@router.get("/v1/segments/{segment_id}", tags=["segments"], responses=errors)
async def get_segment(
    segment_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = reader
) -> dict[str, Any]:
    segment = await repo(request).get_segment(principal.tenant_id, _id(segment_id, "segment"))
    if segment is None:
        raise ApiError(404, "segment_not_found", "no segment with this id")
    return segment

# templates --------------------------------------------------------------------------------


def _check_template(body: TemplateBody, principal: Principal) -> None:
    problems = validate(Template(body.purpose, body.default_language, body.variants, body.sender))
    if problems:
        details = [p.detail() | {"loc": f"body.{p.loc}" if p.loc else "body"} for p in problems]
        raise ApiError(422, "template_invalid", str(problems[0]), details)
    # the sender must be one of the tenant's verified senders (docs/senders.md)
    refused = named_problem(principal.senders, body.sender, "body.sender")
    if refused is not None:
        raise ApiError(422, refused["code"], refused["msg"], [refused])


@router.post("/v1/templates", status_code=201, tags=["templates"], responses={**errors, 409: {}})
async def create_template(body: TemplateBody, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Store a template (version 1): variants per language, placeholders with defaults, a sender."""
    _check_template(body, principal)
    created = await repo(request).create_template(principal.tenant_id, body.model_dump())
    if created is None:
        raise ApiError(409, "template_exists", f"a template named {body.name!r} exists")
    return created


@router.get("/v1/templates", tags=["templates"], responses=errors)
async def list_templates(
    request: Request,
    principal: Principal = reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    archived: Annotated[bool | None, Query(description="true: archived ones only; false: live ones only")] = None,
) -> dict[str, Any]:
    page = await repo(request).list_templates(principal.tenant_id, after=decode_cursor(cursor), limit=limit,
                                              archived=archived)
    return {"templates": page, "next_cursor": encode_cursor(page[-1]["template_id"]) if len(page) == limit else None}


@router.get("/v1/templates/{template_id}", tags=["templates"], responses=errors)
async def get_template(
    template_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: Principal = reader,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="An earlier version (default: the current one)")] = None,
) -> dict[str, Any]:
    """The template at its current version (``version``), or at an earlier one; archived ones too."""
    template = await repo(request).get_template(principal.tenant_id, _id(template_id, "template"), version)
    if template is None:
        raise ApiError(404, "template_not_found", "no template with this id" + (" and version" if version else ""))
    return template


@router.get("/v1/templates/{template_id}/versions", tags=["templates"], responses=errors)
async def list_template_versions(
    template_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: Principal = reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """Every version of the template, newest first (a message names the one it was rendered from)."""
    versions = await repo(request).template_versions(principal.tenant_id, _id(template_id, "template"), limit)
    if versions is None:
        raise ApiError(404, "template_not_found", "no template with this id")
    return {"template_id": template_id, "versions": versions}


@router.put("/v1/templates/{template_id}", tags=["templates"], responses={**errors, 409: {}})
async def update_template(
    template_id: Annotated[str, Path(max_length=64)],
    body: TemplateBody,
    request: Request,
    principal: Principal = writer,
    if_match: Annotated[str | None, Header(description="The version you read: 409 if it changed since")] = None,
) -> dict[str, Any]:
    """Write the template's next version (the whole template, as created). New sends use it
    (unless they name a ``template_version``); campaigns keep the version they were created with."""
    expected = None
    if if_match is not None:
        try:
            expected = int(if_match.strip().removeprefix("W/").strip('"'))
        except ValueError:
            raise ApiError(422, "invalid_if_match", "If-Match is the template's version number") from None
    _check_template(body, principal)
    try:
        updated = await repo(request).update_template(principal.tenant_id, _id(template_id, "template"),
                                                      body.model_dump(), expected)
    except TemplateArchived:
        raise ApiError(409, "template_archived", "an archived template cannot change") from None
    except TemplateVersionConflict as exc:
        raise ApiError(409, "version_conflict", f"the template changed: it is at version {exc.current}") from None
    except TemplateNameTaken:
        raise ApiError(409, "template_exists", f"a template named {body.name!r} exists") from None
    if updated is None:
        raise ApiError(404, "template_not_found", "no template with this id")
    return updated


@router.post("/v1/templates/{template_id}/archive", tags=["templates"], responses=errors)
async def archive_template(
    template_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = writer
) -> dict[str, Any]:
    """Archive the template: it stays readable, takes no new sends or campaigns, and cannot
    change; campaigns already created with it go on with their version."""
    archived = await repo(request).archive_template(principal.tenant_id, _id(template_id, "template"))
    if archived is None:
        raise ApiError(404, "template_not_found", "no template with this id")
    return archived


@router.post("/v1/templates/{template_id}/preview", tags=["templates"], responses=errors)
async def preview_template(
    template_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: Principal = reader,
    body: PreviewBody | None = None,
) -> dict[str, Any]:
    """Render the template for a contact, or sample fields, with its encoding and segment count."""
    r = repo(request)
    stored = await r.get_template(principal.tenant_id, _id(template_id, "template"))
    if stored is None:
        raise ApiError(404, "template_not_found", "no template with this id")
    body = body or PreviewBody()
    if body.contact_id is not None:
        contact = await r.get_contact(principal.tenant_id, _id(body.contact_id, "contact"))
        if contact is None:
            raise ApiError(404, "contact_not_found", "no contact with this id")
    elif body.contact is not None:
        contact = body.contact.model_dump()
    else:
        contact = SAMPLE_CONTACT
    template = Template(stored["purpose"], stored["default_language"], stored["variants"], stored["sender"])
    try:
        rendered = render(template, contact, smart=deps.ingest_settings(request).smart_encoding)
    except TemplateError as exc:
        raise ApiError(422, exc.code, str(exc), [exc.detail()]) from None
    return {"template_id": stored["template_id"], **rendered.as_dict(), "parts": list(rendered.info.parts)}

