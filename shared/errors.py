"""Error answers: one shape for field-level validation errors, and the catalogue of every
top-level error code the HTTP APIs answer.

Every answer's body is ``{"error": {"code", "message", "details": [{"loc", "code", "msg"}]}}``.
``CATALOGUE`` maps each ``code`` to its HTTP status(es) and what it means; docs/errors.md is
generated from it (``python -m shared.errors > docs/errors.md``), the OpenAPI documents of the
services list it (shared/api.py), and tests/repo/test_error_catalogue.py fails when the code
raises a code that is not here or the doc is stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def field_errors(errors: Iterable[Any]) -> list[dict[str, str]]:
    """Pydantic error dicts as ``{"loc": "a.b", "code": "...", "msg": "..."}``."""
    return [{"loc": ".".join(str(p) for p in e["loc"]), "code": e["type"], "msg": e["msg"]} for e in errors]


# Field-level codes that are the answer's code when they are the only problem of a request
# (a more precise reason than ``validation_failed``).
LIFTED = frozenset({"template_or_body", "sender_or_pool"})


def top_level_code(details: Iterable[dict[str, str]], default: str = "validation_failed") -> str:
    """``details``' one code when it is one of :data:`LIFTED`, else ``default``."""
    codes = {d["code"] for d in details}
    return next(iter(codes)) if len(codes) == 1 and codes <= LIFTED else default


@dataclass(frozen=True, slots=True)
class ErrorCode:
    statuses: tuple[int, ...]
    description: str
    retry: bool = False  # the same request may succeed later


def _c(statuses: int | tuple[int, ...], description: str, retry: bool = False) -> ErrorCode:
    return ErrorCode(statuses if isinstance(statuses, tuple) else (statuses,), description, retry)


_CONTACT_FIELD = "a contact field is not valid (contacts API; the field is in `details`)"
_TEMPLATE = "a template is not valid or does not render (the place is in `details`)"

CATALOGUE: dict[str, ErrorCode] = {
    # 400
    "bad_content_length": _c(400, "`Content-Length` is not a number"),
    "http_error": _c(400, "another HTTP-level error (the message says which)"),
    # 401
    "missing_api_key": _c(401, "no API key: send `Authorization: Bearer <key>`"),
    "invalid_api_key": _c(401, "the API key is malformed or unknown"),
    "revoked_api_key": _c(401, "the API key was revoked"),
    "expired_api_key": _c(401, "the API key expired (it was rotated)"),
    "signature_missing": _c(401, "a receipt or callback without its signature header"),
    "signature_malformed": _c(401, "the signature header is not `t=...,v1=...`"),
    "signature_expired": _c(401, "the signature's timestamp is outside the tolerance"),
    "signature_invalid": _c(401, "the signature does not match the body (or the gateway is unknown)"),
    # 403
    "insufficient_scope": _c(403, "the API key lacks the scope this route needs"),
    "tenant_disabled": _c(403, "the key's tenant is disabled"),
    # 404
    "not_found": _c(404, "no such route"),
    "message_not_found": _c(404, "no message with this id for your tenant (yet: reports may lag a moment)"),
    "campaign_not_found": _c(404, "no campaign with this id for your tenant"),
    "contact_not_found": _c(404, "no contact with this id"),
    "segment_not_found": _c((404, 422), "no segment with this id (422 when a campaign's body names it)"),
    "template_not_found": _c((404, 422), "no template with this id (422 when a campaign's variant or a message names it)"),
    "journey_not_found": _c(404, "no journey with this id"),
    "erasure_not_found": _c(404, "no erasure with this id for your tenant"),
    "export_not_found": _c(404, "no subject-access export with this id for your tenant"),
    "tenant_not_found": _c(404, "no such tenant"),
    "sender_not_found": _c(404, "no sender of your tenant with this number or id"),
    "sender_pool_not_found": _c((404, 422), "no sender pool of your tenant with this name (422 when a message's `sender_pool` names it)"),
    "not_suppressed": _c(404, "this number is not on the suppression list"),
    "link_not_found": _c(404, "`GET /l/{code}`: no short link with this code (also: its message was not submitted"
                              " yet or never will be, or it was asked on another domain than its tenant's)"),
    # 405, 408
    "method_not_allowed": _c(405, "the route does not take this method"),
    "body_timeout": _c(408, "the body was still arriving after `HERALD_HTTP_BODY_TIMEOUT_S`", retry=True),
    # 409
    "idempotency_conflict": _c(409, "this idempotency key was used with a different request"),
    "version_conflict": _c(409, "`If-Match` names an older version: read the journey (or template) and retry"),
    "journey_archived": _c(409, "an archived journey cannot change"),
    "invalid_state": _c(409, "the campaign's state does not allow this action"),
    "already_sent": _c(409, "the message is already on its way (sent or final): it cannot be cancelled or rescheduled"),
    "not_scheduled": _c(409, "only a message the scheduler holds (status `scheduled`) can be cancelled or rescheduled"),
    "state_changed": _c(409, "the campaign changed meanwhile: read it and retry", retry=True),
    "contact_exists": _c(409, "a contact with this phone exists"),
    "sender_exists": _c(409, "this number or sender id is already registered (to this or another tenant)"),
    "segment_exists": _c(409, "a segment with this name exists"),
    "template_exists": _c(409, "a template with this name exists"),
    "template_archived": _c((409, 422), "the template is archived: it cannot change (409) and takes no new sends or campaigns (422)"),
    # 410
    "link_expired": _c(410, "`GET /l/{code}`: the short link is past its lifetime (`HERALD_LINK_TTL_S`, or the"
                            " tenant's `link_ttl_s`)"),
    "link_taken_down": _c(410, "`GET /l/{code}`: an operator took the short link down (`herald admin link takedown`)"),
    # 413, 415
    "body_too_large": _c(413, "the body is over the route's limit"),
    "batch_too_large": _c(413, "more items than a batch may hold"),
    "unsupported_media_type": _c(415, "the `Content-Type` is not one the route takes (JSON routes: `application/json`)"),
    # 422: the request
    "validation_failed": _c(422, "the body, query or parameters are not valid (each problem in `details`)"),
    "malformed_json": _c(422, "the body is not valid JSON (or a JSON contact import is not an array of objects)"),
    "malformed_form": _c(422, "the body is not UTF-8 form data"),
    "empty_batch": _c(422, "a batch without items"),
    "all_rejected": _c(422, "no item of the batch is valid (each item's error in `details`)"),
    "send_at_too_far": _c(422, "`send_at` is more than 35 days ahead"),
    "opt_out_missing": _c(422, "a marketing text without an opt-out instruction, for a tenant whose `marketing_opt_out` is `refuse`"),
    "send_at_in_past": _c(422, "a campaign's `send_at` is in the past"),
    "sender_not_registered": _c(422, "the `sender` is not one of the tenant's registered senders (docs/senders.md)"),
    "sender_not_verified": _c(422, "the `sender` is pending or suspended (or takes replies only): only verified senders send"),
    "sender_not_allowed_for_country": _c(422, "the `sender` may not send to the destination: not among its `countries`, or the country's rules refuse it (alphanumeric not supported, local number required)"),
    "sender_registration_missing": _c(422, "the destination country needs a registration the sender lacks (US 10DLC, toll-free verification, India DLT)"),
    "sender_pool_exhausted": _c(422, "no sender of the `sender_pool` may send to the destination (each refused: suspended, removed, not allowed for the country)"),
    "sender_or_pool": _c(422, "a message names both a `sender` and a `sender_pool`"),
    "destination_not_allowed": _c(422, "the tenant may not send to this country (`allowed_countries`, high-cost destinations opt-in)"),
    "webhook_host_not_public": _c(422, "a webhook URL whose host is not publicly routable (loopback, private, link-local, cluster-internal)"),
    "webhook_https_required": _c(422, "a webhook URL that is not `https`"),
    "webhook_url_invalid": _c(422, "a webhook URL that cannot be read"),
    "invalid_cursor": _c(422, "a `cursor` this API did not return"),
    "invalid_if_match": _c(422, "`If-Match` is not a version number"),
    # 422: finding messages (GET /v1/messages, /v1/messages/export)
    "unknown_status_filter": _c(422, "a `status` filter that is not a message status"),
    "invalid_metadata_filter": _c(422, "a `metadata` filter that is not `key=value`"),
    "too_many_filters": _c(422, "more than 5 `metadata` filters"),
    "timezone_required": _c(422, "`since` or `until` without a time zone"),
    "empty_range": _c(422, "`since` is not before `until`"),
    "query_too_broad": _c(422, "a search that ran past its time budget: add filters or a shorter date range", retry=False),
    "occurred_in_future": _c(422, "`occurred_at` is in the future"),
    "proof_required": _c(422, "granting consent needs proof: `form_id` or `text_shown`"),
    # 422: contact events
    "phone_or_contact_required": _c(422, "an event needs the contact's `phone` or `contact_id`"),
    "unknown_contact": _c(422, "an event's `contact_id` is not a contact of this tenant"),
    "contact_mismatch": _c(422, "an event's `phone` and `contact_id` name different contacts"),
    "occurred_at_in_future": _c(422, "an event's `occurred_at` is more than 5 minutes ahead"),
    # 422: phone numbers
    "not_e164": _c(422, "the number is not in E.164 form (`+` and the country code)"),
    "unparseable_number": _c(422, "the number cannot be parsed"),
    "impossible_number": _c(422, "the number has an impossible length for its country"),
    "invalid_number": _c(422, "the number is not valid in its country's numbering plan (contacts: an attribute is not a number)"),
    "unsupported_number_type": _c(422, "fixed lines and premium-rate numbers cannot take SMS (`HERALD_ALLOWED_NUMBER_TYPES`)"),
    # 422: receipts
    "malformed_receipts": _c(422, "a receipts body is not `{\"receipts\": [...]}` or one receipt"),
    "malformed_receipt": _c(422, "a receipt is not an object (per receipt)"),
    "unknown_status": _c(422, "a receipt's status is unknown (per receipt)"),
    "invalid_receipt": _c(422, "a receipt is not valid (per receipt)"),
    # 422: campaigns and journeys
    "no_test_numbers": _c(422, "a campaign test without numbers"),
    "mixed_purposes": _c(422, "a campaign's variants mix marketing and transactional templates"),
    "ab_test_needs_variants": _c(422, "an A/B test needs two variants or more"),
    "duplicate_variant": _c(422, "variant names must be unique"),
    "invalid_percent": _c(422, "a variant's percent is out of range"),
    "split_not_100": _c(422, "the variants' percents do not add up to 100"),
    "unknown_template": _c(422, "a journey's send step names a template the tenant does not have"),
    "segment_invalid": _c(422, "a segment filter does not parse (the place is in `details`)"),
    # 422: templates
    "template_invalid": _c(422, "a template is not valid (each problem in `details`)"),
    "invalid_purpose": _c(422, _TEMPLATE), "invalid_sender": _c(422, _TEMPLATE), "no_variants": _c(422, _TEMPLATE),
    "too_many_variants": _c(422, _TEMPLATE), "default_language_missing": _c(422, _TEMPLATE),
    "empty_variant": _c(422, _TEMPLATE), "variant_too_long": _c(422, _TEMPLATE),
    "default_too_long": _c(422, _TEMPLATE), "invalid_placeholder": _c(422, _TEMPLATE),
    "rendered_too_long": _c(422, _TEMPLATE),
    # 422: sending by template
    "template_or_body": _c(422, "a message gives both or neither of `body` and `template_id` (or `values` / `template_version` without a `template_id`)"),
    "template_variable_missing": _c(422, "the template's text has a `{{values.<key>}}` without a default that `values` does not give (each in `details`)"),
    "template_version_not_found": _c(422, "`template_version` names a version the template does not have"),
    "template_type_mismatch": _c(422, "`type` differs from the template's purpose (leave it out: it is the template's)"),
    # 422: contacts
    "unknown_field": _c(422, "an unknown contact field, or a template placeholder without a value"),
    "missing_phone": _c(422, _CONTACT_FIELD), "invalid_type": _c(422, _CONTACT_FIELD),
    "too_long": _c(422, _CONTACT_FIELD), "invalid_characters": _c(422, _CONTACT_FIELD),
    "number_out_of_range": _c(422, _CONTACT_FIELD), "invalid_date": _c(422, _CONTACT_FIELD),
    "too_many_attributes": _c(422, _CONTACT_FIELD), "invalid_key": _c(422, _CONTACT_FIELD),
    "invalid_tag": _c(422, _CONTACT_FIELD), "too_many_tags": _c(422, _CONTACT_FIELD),
    "invalid_language": _c(422, f"{_CONTACT_FIELD}; or a template variant's language"),
    "invalid_country": _c(422, _CONTACT_FIELD), "invalid_time_zone": _c(422, _CONTACT_FIELD),
    "invalid_bool": _c(422, _CONTACT_FIELD),
    # contact imports that stop (the rows before were imported; `import` in the answer says how many)
    "empty_import": _c(422, "a contact import without a header line"),
    "invalid_encoding": _c(422, "a contact import that is not UTF-8"),
    "row_too_large": _c(422, "a contact import line or record over the size limit (an unclosed quote?)"),
    "invalid_header": _c(422, "a contact import's attribute column is not `attributes.<key>[:type]`"),
    "unknown_column": _c(422, "a contact import's column is not a contact field"),
    "duplicate_column": _c(422, "a contact import names a column twice"),
    "missing_phone_column": _c(422, "a contact import's header has no phone column"),
    "unclosed_quote": _c(422, "a contact import ends inside a quoted field"),
    "import_too_large": _c(413, "a contact import with more rows than allowed"),
    "wrong_column_count": _c(422, "a CSV import row has another number of columns than the header (per row)"),
    "not_an_object": _c(422, "a JSON-lines import row is not an object (per row)"),
    # 429
    "rate_limited": _c(429, "the API key is over its per-minute limit: wait `Retry-After` seconds", retry=True),
    "too_many_previews": _c(429, "too many segment previews in flight for this tenant or instance: wait `Retry-After` seconds", retry=True),
    # 5xx
    "internal_error": _c(500, "an unexpected error (logged)"),
    "service_unavailable": _c(503, "a dependency (database, broker) is unavailable: retry shortly", retry=True),
    "broker_unavailable": _c(503, "could not publish to Kafka: retry with the same idempotency key", retry=True),
    "erasure_key_missing": _c(503, "no erasure key is configured (HERALD_ERASURE_KEYS): nothing was erased; an operator must set one"),
    "segment_timeout": _c(503, "the segment filter took too long to evaluate: narrow it"),
}


def codes_by_status() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for code, entry in CATALOGUE.items():
        for status in entry.statuses:
            out.setdefault(status, []).append(code)
    return {status: sorted(codes) for status, codes in sorted(out.items())}


def markdown() -> str:
    """docs/errors.md."""
    lines = [
        "# Error codes",
        "",
        "<!-- generated by `python -m shared.errors > docs/errors.md`; tests/repo/test_error_catalogue.py checks it -->",
        "",
        "Every error answer is `{\"error\": {\"code\", \"message\", \"details\": [{\"loc\", \"code\", \"msg\"}]}}`.",
        "`code` is one of these (the catalogue is `shared/errors.py`; the services' OpenAPI documents",
        "list them under `components.schemas.Error`). Retry: the same request may succeed later.",
        "",
        "| status | code | retry | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for status, codes in codes_by_status().items():
        for code in codes:
            entry = CATALOGUE[code]
            lines.append(f"| {status} | `{code}` | {'yes' if entry.retry else ''} | {entry.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
