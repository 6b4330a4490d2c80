"""The campaigns HTTP API (ingest): create, test, launch, pause, resume, cancel; tenant policy.

Scopes: ``campaigns:read`` for reads, ``campaigns:write`` for changes, ``policy:write`` for
PUT /v1/policy. Test sends count against the key's message limit. Another tenant's campaign
answers 404 like an unknown id. docs/campaigns.md has the flow and the states.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.ingest import deps
from services.ingest.audience import segments as seg
from services.ingest.audience.contacts_api import decode_cursor, encode_cursor
from services.ingest.audience.contacts_repo import AudienceMember, AudienceRepository
from services.ingest.audience.preview_gate import gate_for
from services.ingest.audience.templates import SAMPLE_CONTACT, Template, TemplateError, render
from services.ingest.campaigns.domain import CampaignError, Variant, check_variants, pinned_versions, transition
from services.ingest.campaigns.repository import CampaignRepository, campaign_dict
from services.ingest.domain import MAX_SCHEDULE_AHEAD, Rejection, accept
from services.ingest.metrics import RATE_LIMITED
from services.ingest.ratelimit import RateLimiter
from services.ingest.service import accepted_event
from services.ingest.settings import IngestSettings
from shared import tenant_admin
from shared.api import ApiError, principal_dependency
from shared.auth import Principal
from shared.contracts import MessageRequest, utcnow
from shared.egress import URL_INVALID
from shared.kafka import Publisher
from shared.senders import POOL_NOT_FOUND, named_problem
from shared.senders import load_rules as load_sender_rules

MAX_PAGE = 200
MAX_TEST_NUMBERS = 20


class CapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max: int = Field(ge=0, le=1000, description="Most marketing messages per contact in the window")
    window_s: int = Field(ge=60, le=31 * 86400, description="Sliding window in seconds (up to 31 days)")


class VariantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", examples=["A"])
    template_id: uuid.UUID
    percent: float = Field(gt=0, le=100, description="Share of the audience (of the test share with an A/B test)")


class AbTestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_percent: float = Field(gt=0, lt=100, description="Share of the audience that tests the variants")
    metric: Literal["click_rate", "delivery_rate", "conversion_rate"] = "click_rate"
    wait_s: int = Field(3600, ge=60, le=7 * 86400, description="How long to wait for results before picking the winner")
    min_sample: int = Field(100, ge=1, description="Fewest messages per variant before a winner may be declared")


class CampaignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    segment_id: uuid.UUID | None = Field(None, description="A stored segment (or give `segment`)")
    segment: str | None = Field(None, max_length=4000, description="A filter, e.g. country = \"ES\" and \"vip\" in tags")
    variants: list[VariantBody] = Field(min_length=1, max_length=10)
    sender: str | None = Field(None, pattern=r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$",
                               description="Overrides the templates' sender")
    sender_pool: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                    description="Send from this sender pool instead (each contact keeps its sticky sender; "
                                    "docs/senders.md): not with `sender`")
    send_at: AwareDatetime | None = Field(None, description="Launching makes it wait until then (up to 35 days ahead)")
    frequency_caps: list[CapBody] = Field(default_factory=list, max_length=5,
                                          description="Caps for this campaign on top of the tenant's")
    test_numbers: list[str] = Field(default_factory=list, max_length=MAX_TEST_NUMBERS)
    ab_test: AbTestBody | None = Field(None, description="Send the variants to a test share, then the winner to the rest")

    @model_validator(mode="after")
    def _one_segment(self) -> CampaignBody:
        if (self.segment_id is None) == (self.segment is None):
            raise ValueError("give exactly one of segment_id or segment")
        return self


class TestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    numbers: list[str] | None = Field(None, max_length=MAX_TEST_NUMBERS, description="Default: the campaign's test_numbers")


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    marketing_consent: Literal["required", "opt_out"] | None = None
    marketing_opt_out: Literal["append", "refuse"] | None = Field(
        None, description="Marketing sent through POST /v1/messages or the trigger topic without an opt-out "
        "instruction: 'append' one in the recipient's language (the default), or 'refuse' it (422 opt_out_missing)",
    )
    frequency_caps: list[CapBody] | None = Field(None, max_length=5)
    reply_webhook_url: str | None = Field(
        None, max_length=tenant_admin.MAX_URL_LENGTH,
        description="Where ordinary replies are posted, signed (docs/replies.md); null stops it, absent leaves it",
    )
    country: str | None = Field(
        None, min_length=2, max_length=2,
        description="The tenant's own country (ISO 3166-1 alpha-2): the only destination when allowed_countries is "
        "not set; null clears it, absent leaves it",
    )
    allowed_countries: list[Annotated[str, Field(min_length=2, max_length=2)]] | None = Field(
        None, max_length=300,
        description="The only destination countries allowed (high-cost ones must be named here); null clears it "
        "(the tenant's country, else the service default, applies), absent leaves it",
    )


def _campaign_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "campaign_not_found", "no campaign with this id") from None


def _member(r: Any) -> AudienceMember:
    return AudienceMember(r["contact_id"], r["phone_e164"], r["first_name"], r["last_name"], r["language"], r["country"],
                          r["time_zone"], r["attributes"], r["consent_marketing"])


ACT_ATTEMPTS = 5  # reads of a campaign whose state the launcher keeps changing


router = APIRouter()
reader = Depends(principal_dependency("campaigns:read"))
writer = Depends(principal_dependency("campaigns:write"))
policy_writer = Depends(principal_dependency("policy:write"))
errors: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}, 422: {}}


def repo(request: Request) -> CampaignRepository:
    return CampaignRepository(request.app.state.pool)


async def load(request: Request, principal: Principal, campaign_id: str) -> Any:
    row = await repo(request).get(principal.tenant_id, _campaign_id(campaign_id))
    if row is None:
        raise ApiError(404, "campaign_not_found", "no campaign with this id")
    return row


@router.post("/v1/campaigns", status_code=201, tags=["campaigns"], responses=errors)
async def create_campaign(body: CampaignBody, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Create a draft campaign: an audience (segment), variants with their split, caps and test numbers."""
    tenant = principal.tenant_id
    pool = request.app.state.pool
    if body.segment_id is not None:
        stored = await AudienceRepository(pool).get_segment(tenant, body.segment_id)
        if stored is None:
            raise ApiError(422, "segment_not_found", "no segment with this id",
                           [{"loc": "body.segment_id", "code": "segment_not_found", "msg": "unknown segment"}])
        text = stored["filter"]
    else:
        text = body.segment or ""
    try:
        normalized = seg.normalize(seg.parse(text))
    except seg.SegmentError as exc:
        raise ApiError(422, "segment_invalid", str(exc), [exc.detail()]) from None
    variants = [Variant(v.name, v.template_id, v.percent) for v in body.variants]
    problems = check_variants(variants)
    templates = await repo(request).templates(tenant, [v.template_id for v in variants])
    for i, v in enumerate(variants):
        if v.template_id not in templates:
            problems.append({"loc": f"body.variants.{i}.template_id", "code": "template_not_found", "msg": "unknown template"})
        elif templates[v.template_id]["archived"]:
            problems.append({"loc": f"body.variants.{i}.template_id", "code": "template_archived",
                             "msg": "the template is archived: it takes no new campaigns"})
    # the campaign's sender, else each template's: one of the tenant's verified senders (docs/senders.md)
    named = [("body.sender", body.sender)] if body.sender is not None else [
        (f"body.variants.{i}.template_id", templates[v.template_id]["sender"])
        for i, v in enumerate(variants) if v.template_id in templates]
    if body.sender_pool is not None:  # the pool's senders are checked per contact when it is fanned out
        named = []
        problems += pool_problems(principal, body.sender_pool, body.sender, "body.sender_pool")
    problems += [p for loc, sender in named if (p := named_problem(principal.senders, sender, loc)) is not None]
    if len({templates[v.template_id]["purpose"] for v in variants if v.template_id in templates}) > 1:
        problems.append({"loc": "body.variants", "code": "mixed_purposes",
                         "msg": "every variant's template has the same purpose (marketing or transactional)"})
    if body.send_at is not None and body.send_at > utcnow() + MAX_SCHEDULE_AHEAD:
        problems.append({"loc": "body.send_at", "code": "send_at_too_far", "msg": "at most 35 days ahead"})
    if body.send_at is not None and body.send_at <= utcnow():
        problems.append({"loc": "body.send_at", "code": "send_at_in_past",
                         "msg": "send_at is in the past; leave it out to send when launched"})
    if body.ab_test is not None and len(variants) < 2:
        problems.append({"loc": "body.ab_test", "code": "ab_test_needs_variants", "msg": "an A/B test needs two variants or more"})
    if problems:
        code = problems[0]["code"] if len({p["code"] for p in problems}) == 1 else "validation_failed"
        raise ApiError(422, code, problems[0]["msg"], problems)
    row = await repo(request).create(tenant, {
        "name": body.name,
        "segment_id": body.segment_id,
        "segment_filter": normalized,
        "sender": body.sender,
        "sender_pool": body.sender_pool,
        # each variant renders the template's version of now, whatever later updates do
        "variants": [{"name": v.name, "template_id": str(v.template_id), "percent": v.percent,
                      "template_version": templates[v.template_id]["version"]} for v in variants],
        "frequency_caps": [c.model_dump() for c in body.frequency_caps],
        "test_numbers": body.test_numbers,
        "send_at": body.send_at,
        "ab_test": body.ab_test.model_dump() if body.ab_test else None,
    })
    return campaign_dict(row)


@router.get("/v1/campaigns", tags=["campaigns"], responses=errors)
async def list_campaigns(
    request: Request,
    principal: Principal = reader,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    rows = await repo(request).list(principal.tenant_id, after=decode_cursor(cursor), limit=limit)
    page = [campaign_dict(r) for r in rows]
    return {"campaigns": page, "next_cursor": encode_cursor(str(rows[-1]["campaign_id"])) if len(rows) == limit else None}


@router.get("/v1/campaigns/{campaign_id}", tags=["campaigns"], responses=errors)
async def get_campaign(campaign_id: Annotated[str, Path(max_length=64)], request: Request,
                       principal: Principal = reader) -> dict[str, Any]:
    return campaign_dict(await load(request, principal, campaign_id))


@router.get("/v1/campaigns/{campaign_id}/audience", tags=["campaigns"], responses={**errors, 429: {}, 503: {}})
async def campaign_audience(campaign_id: Annotated[str, Path(max_length=64)], request: Request,
                            principal: Principal = reader,
                            settings: IngestSettings = Depends(deps.ingest_settings)) -> dict[str, Any]:
    """How many contacts the segment matches now, and a sample (consent is checked at send time).
    Capped like segment previews (429 with Retry-After)."""
    row = await load(request, principal, campaign_id)
    try:
        node = seg.parse(row["segment_filter"])
    except seg.SegmentError as exc:  # stored before the filter rules it breaks
        raise ApiError(422, "segment_invalid", str(exc), [exc.detail()]) from None
    gate = gate_for(request.app, settings.segment_preview_concurrency, settings.segment_preview_per_tenant)
    try:
        async with gate.slot(principal.tenant_id):
            count, sample = await AudienceRepository(request.app.state.pool, deps.erasure_keyring(request)).preview(principal.tenant_id, node)
    except asyncpg.QueryCanceledError:  # the statement timeout
        raise ApiError(503, "segment_timeout", "the filter took too long to evaluate; narrow it") from None
    return {"campaign_id": str(row["campaign_id"]), "count": count, "sample": sample}


def limiter(request: Request, settings: IngestSettings) -> RateLimiter:
    found = getattr(request.app.state, "campaign_test_limiter", None)
    if found is None:
        found = request.app.state.campaign_test_limiter = RateLimiter(
            request.app.state.pool, settings.rate_limit_requests_per_minute, settings.rate_limit_messages_per_minute,
            lease=False,
        )
    return found


@router.post("/v1/campaigns/{campaign_id}/test", tags=["campaigns"], responses={**errors, 429: {}, 503: {}})
async def send_test(campaign_id: Annotated[str, Path(max_length=64)], request: Request,
                    body: TestBody | None = None, principal: Principal = writer,
                    settings: IngestSettings = Depends(deps.ingest_settings),
                    publisher: Publisher = Depends(deps.publisher)) -> dict[str, Any]:
    """Send every variant to the test numbers now, rendered for the contact with that number
    (or sample fields). Test sends are transactional, so consent, caps and quiet hours do not
    hold them, and they are not counted in the campaign's report. Every message counts against
    the key's message limit (429 with Retry-After over it), and the numbers must be of the
    allowed number types."""
    row = await load(request, principal, campaign_id)
    numbers = (body.numbers if body and body.numbers is not None else list(row["test_numbers"]))
    if not numbers:
        raise ApiError(422, "no_test_numbers", "give numbers, or store test_numbers on the campaign")
    verdict = await limiter(request, settings).check(principal.key_id, len(numbers) * len(row["variants"]),
                                                     principal.requests_per_minute, principal.messages_per_minute)
    if not verdict.allowed:
        RATE_LIMITED.labels(verdict.limit).inc()
        raise ApiError(429, "rate_limited",
                       f"this API key is over its {verdict.limit} per minute limit; retry in {verdict.retry_after_s}s",
                       headers={"Retry-After": str(verdict.retry_after_s)})
    r = repo(request)
    stored = await r.templates(principal.tenant_id, [uuid.UUID(v["template_id"]) for v in row["variants"]],
                               pinned_versions(row["variants"]))
    contacts = await r.contacts_by_phone(principal.tenant_id, numbers)
    now, results, outgoing = utcnow(), [], []
    for number in numbers:
        contact = contacts.get(number)
        fields = _member(contact).template_fields() if contact else SAMPLE_CONTACT
        for v in row["variants"]:
            t = stored.get(uuid.UUID(v["template_id"]))
            if t is None:
                results.append({"to": number, "variant": v["name"], "error": {"code": "template_not_found"}})
                continue
            try:
                rendered = render(Template(t["purpose"], t["default_language"], t["variants"], t["sender"]), fields,
                                  smart=settings.smart_encoding)
                request_body = MessageRequest(
                    to=number, body=rendered.info.text, type="transactional",
                    # a pool campaign's test goes from the pool's sender for the number (not stored as its sticky one)
                    sender=None if row["sender_pool"] else row["sender"] or rendered.sender, sender_pool=row["sender_pool"],
                    metadata={"campaign_test": str(row["campaign_id"]), "variant": v["name"]},
                )
                message = accept(request_body, message_id=uuid.uuid4(), now=now, source="api",
                                 allowed_types=settings.allowed_number_types, smart_encoding=settings.smart_encoding,
                                 geo=principal.geo, geo_rules=settings.geo_rules(),
                                 senders=principal.senders, sender_rules=load_sender_rules())
            except (TemplateError, Rejection, ValueError) as exc:
                code = getattr(exc, "code", "invalid")
                results.append({"to": number, "variant": v["name"], "error": {"code": code, "message": str(exc)}})
                continue
            outgoing.append(accepted_event(principal.tenant_id, message, trace_id=row["campaign_id"].hex))
            results.append({"to": number, "variant": v["name"], "message_id": str(message.message_id),
                            "text": rendered.info.text, "encoding": rendered.info.encoding, "segments": rendered.info.segments})
    try:
        await publisher.publish(outgoing)
    except Exception as exc:
        raise ApiError(503, "broker_unavailable", "could not publish the test messages; retry") from exc
    return {"campaign_id": str(row["campaign_id"]), "sent": len(outgoing), "results": results}


async def act(request: Request, principal: Principal, campaign_id: str, action: Literal["launch", "pause", "resume", "cancel"]) -> dict[str, Any]:
    # The launcher moves a campaign on by itself (testing -> running -> completed): when it
    # does so between the read and the write, the action is decided again on the new state
    # rather than refused (an operator pausing a campaign wants it paused, not a 409).
    for _ in range(ACT_ATTEMPTS):
        row = await load(request, principal, campaign_id)
        try:
            new = transition(row["state"], action, send_at=row["send_at"], now=utcnow(), paused_from=row["paused_from"])
        except CampaignError as exc:
            raise ApiError(exc.status, exc.code, str(exc), [{"loc": "state", "code": exc.code, "msg": row["state"]}]) from None
        changed = await repo(request).change_state(principal.tenant_id, row["campaign_id"], row["state"], new)
        if changed is not None:
            return campaign_dict(changed)
    raise ApiError(409, "state_changed", "the campaign kept changing meanwhile; read it and retry")


def pool_problems(principal: Principal, pool: str, sender: str | None, loc: str) -> list[dict[str, str]]:
    """A campaign naming a sender pool: one of the tenant's, and no sender beside it."""
    if sender is not None:
        return [{"loc": loc, "code": "sender_or_pool", "msg": "give a sender or a sender_pool, not both"}]
    if pool not in principal.senders.pools:
        return [{"loc": loc, "code": POOL_NOT_FOUND, "msg": f"sender pool {pool!r} is not one of this tenant's pools"}]
    return []


@router.post("/v1/campaigns/{campaign_id}/launch", tags=["campaigns"], responses=errors)
async def launch(campaign_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Start sending now, or at send_at (state scheduled)."""
    row = await load(request, principal, campaign_id)
    # a sender suspended or withdrawn since the campaign was created stops its launch (docs/senders.md)
    if row["sender_pool"] is not None:
        refused = pool_problems(principal, row["sender_pool"], None, "sender_pool")
        if refused:
            raise ApiError(422, refused[0]["code"], refused[0]["msg"], refused)
        return await act(request, principal, campaign_id, "launch")
    if row["sender"] is not None:
        named = [("sender", row["sender"])]
    else:
        pinned = {uuid.UUID(v["template_id"]): v.get("template_version") for v in row["variants"]}
        stored = await repo(request).templates(principal.tenant_id, list(pinned), pinned)
        named = [(f"variants.{i}.template_id", stored[uuid.UUID(v["template_id"])]["sender"])
                 for i, v in enumerate(row["variants"]) if uuid.UUID(v["template_id"]) in stored]
    refused = [p for loc, sender in named if (p := named_problem(principal.senders, sender, loc)) is not None]
    if refused:
        raise ApiError(422, refused[0]["code"], refused[0]["msg"], refused)
    return await act(request, principal, campaign_id, "launch")


@router.post("/v1/campaigns/{campaign_id}/pause", tags=["campaigns"], responses=errors)
async def pause(campaign_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Stop new sends within seconds; messages not yet sent are held until resumed."""
    return await act(request, principal, campaign_id, "pause")


@router.post("/v1/campaigns/{campaign_id}/resume", tags=["campaigns"], responses=errors)
async def resume(campaign_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Continue where the campaign stopped, with no contact messaged twice."""
    return await act(request, principal, campaign_id, "resume")


@router.post("/v1/campaigns/{campaign_id}/cancel", tags=["campaigns"], responses=errors)
async def cancel(campaign_id: Annotated[str, Path(max_length=64)], request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Stop for good: messages not yet sent end suppressed (campaign_cancelled)."""
    return await act(request, principal, campaign_id, "cancel")

# tenant policy --------------------------------------------------------------------------------


@router.get("/v1/policy", tags=["policy"], responses=errors)
async def get_policy(request: Request, principal: Principal = reader) -> dict[str, Any]:
    """The tenant's marketing consent mode and frequency caps (the scheduler applies them), its reply
    webhook URL, its geo permissions (country, allowed_countries: docs/senders.md), and its own short-link
    domain and link lifetime (link_domain, link_ttl_s; null: the service's; set by the operator:
    docs/results.md)."""
    async with request.app.state.pool.acquire() as conn:
        policy = await tenant_admin.tenant_policy(conn, principal.tenant_id)
    if policy is None:
        raise ApiError(404, "tenant_not_found", "no such tenant")
    return policy


@router.put("/v1/policy", tags=["policy"], responses=errors)
async def put_policy(body: PolicyBody, request: Request, principal: Principal = policy_writer) -> dict[str, Any]:
    """Change the consent mode, frequency caps or reply webhook URL (scope ``policy:write``)."""
    caps = [c.model_dump() for c in body.frequency_caps] if body.frequency_caps is not None else None
    actor = f"api:{principal.key_id}"
    async with request.app.state.pool.acquire() as conn:
        if "reply_webhook_url" in body.model_fields_set:
            try:
                done = await tenant_admin.reply_webhook_set(conn, actor, principal.tenant_id, body.reply_webhook_url,
                                                            deps.egress_policy(request))
            except tenant_admin.WebhookRefused as exc:
                # an unreadable URL keeps its old answer; a refused destination says why
                code = "validation_failed" if exc.code == URL_INVALID else exc.code
                detail = "url_invalid" if exc.code == URL_INVALID else exc.code
                raise ApiError(422, code, str(exc),
                               [{"loc": "body.reply_webhook_url", "code": detail, "msg": str(exc)}]) from None
            if done is None:
                raise ApiError(404, "tenant_not_found", "no such tenant")
        geo: dict[str, Any] = {f: getattr(body, f) for f in ("country", "allowed_countries") if f in body.model_fields_set}
        if (body.marketing_consent is not None or caps is not None or geo or body.marketing_opt_out is not None
                or "reply_webhook_url" not in body.model_fields_set):
            try:
                policy = await tenant_admin.tenant_policy_set(conn, actor, principal.tenant_id,
                                                              marketing_consent=body.marketing_consent, caps=caps,
                                                              marketing_opt_out=body.marketing_opt_out, **geo)
            except ValueError as exc:
                loc = "body.allowed_countries" if "allowed_countries" in geo else "body.country"
                raise ApiError(422, "validation_failed", str(exc),
                               [{"loc": loc, "code": "country_invalid", "msg": str(exc)}]) from None
        else:
            policy = await tenant_admin.tenant_policy(conn, principal.tenant_id)
    if policy is None:
        raise ApiError(404, "tenant_not_found", "no such tenant")
    return policy

