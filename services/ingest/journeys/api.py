"""The journeys HTTP API: scope ``contacts:write`` to change, ``contacts:read`` to read; a
journey with a send step also needs ``messages:write`` to be created or changed, since its
sends go out without any other request."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request

from services.ingest.journeys.repository import Archived, JourneysRepository, VersionConflict
from shared.api import ApiError, principal_dependency
from shared.auth import Principal
from shared.journeys.definition import JourneyDefinition, SendStep
from shared.senders import POOL_NOT_FOUND, named_problem

ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 422: {}}


def _id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "journey_not_found", "no journey with this id") from None


def _not_found() -> ApiError:
    return ApiError(404, "journey_not_found", "no journey with this id")


router = APIRouter(tags=["journeys"])
reader = Depends(principal_dependency("contacts:read"))
writer = Depends(principal_dependency("contacts:write"))


def repo(request: Request) -> JourneysRepository:
    return JourneysRepository(request.app.state.pool)


async def checked(request: Request, principal: Principal, body: JourneyDefinition) -> dict[str, Any]:
    """What pydantic cannot check: a sending journey's key may send; every template exists for this tenant."""
    tenant = principal.tenant_id
    if any(isinstance(s, SendStep) for s in body.steps):
        principal.require("messages:write")
    refused = [p for i, s in enumerate(body.steps) if isinstance(s, SendStep)
               and (p := named_problem(principal.senders, s.sender, f"body.steps.{i}.sender")) is not None]
    refused += [{"loc": f"body.steps.{i}.sender_pool", "code": POOL_NOT_FOUND,
                 "msg": f"sender pool {s.sender_pool!r} is not one of this tenant's pools"}
                for i, s in enumerate(body.steps) if isinstance(s, SendStep) and s.sender_pool is not None
                and s.sender_pool not in principal.senders.pools]
    if refused:  # a send step's sender: one of the tenant's verified senders; its pool: one of its pools (docs/senders.md)
        raise ApiError(422, refused[0]["code"], refused[0]["msg"], refused)
    wanted = body.template_ids
    missing = await repo(request).missing_templates(tenant, wanted)
    if missing:
        details = [
            {"loc": f"body.steps.{i}.template_id", "code": "unknown_template", "msg": f"no template {s.template_id}"}
            for i, s in enumerate(body.steps)
            if isinstance(s, SendStep) and s.template_id in missing
        ]
        raise ApiError(422, "unknown_template", "a send step names a template this tenant does not have", details)
    raw = await request.json()  # stored as written ("2h" stays "2h"); it validated as ``body``
    assert isinstance(raw, dict)
    return raw


@router.post("/v1/journeys", status_code=201, responses=ERRORS)
async def create_journey(body: JourneyDefinition, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Create a journey (version 1, active): contacts enter it on its trigger event."""
    raw = await checked(request, principal, body)
    return await repo(request).create(principal.tenant_id, body, raw, principal.key_id)


@router.get("/v1/journeys", responses=ERRORS)
async def list_journeys(
    request: Request,
    principal: Principal = reader,
    state: Literal["active", "archived"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: uuid.UUID | None = Query(None, description="The last journey_id of the previous page"),
) -> dict[str, Any]:
    journeys = await repo(request).list(principal.tenant_id, state, limit, after)
    return {"journeys": journeys, "next_after": journeys[-1]["journey_id"] if len(journeys) == limit else None}


@router.get("/v1/journeys/{journey_id}", responses=ERRORS)
async def get_journey(
    journey_id: str,
    request: Request,
    principal: Principal = reader,
    version: Annotated[int | None, Query(ge=1, description="An earlier version's definition")] = None,
) -> dict[str, Any]:
    found = await repo(request).get(principal.tenant_id, _id(journey_id), version)
    if found is None:
        raise _not_found()
    found.update(await repo(request).run_counts(principal.tenant_id, _id(journey_id)))
    return found


@router.put("/v1/journeys/{journey_id}", responses={**ERRORS, 409: {}})
async def update_journey(
    journey_id: str,
    body: JourneyDefinition,
    request: Request,
    principal: Principal = writer,
    if_match: Annotated[str | None, Header(description="The version you read: 409 if it changed since")] = None,
) -> dict[str, Any]:
    """Write a new version: new entries use it, runs under way finish on their own version."""
    expected = None
    if if_match is not None:
        try:
            expected = int(if_match.strip().strip('"').removeprefix("W/").strip('"'))
        except ValueError:
            raise ApiError(422, "invalid_if_match", "If-Match is the journey's version number") from None
    raw = await checked(request, principal, body)
    try:
        updated = await repo(request).update(principal.tenant_id, _id(journey_id), body, raw, expected, principal.key_id)
    except VersionConflict as exc:
        raise ApiError(409, "version_conflict", f"the journey changed: it is at version {exc.current}") from None
    except Archived:
        raise ApiError(409, "journey_archived", "an archived journey cannot change") from None
    if updated is None:
        raise _not_found()
    return updated


@router.post("/v1/journeys/{journey_id}/archive", responses=ERRORS)
async def archive_journey(journey_id: str, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Stop the journey: nobody enters any more, and runs under way exit before their next step."""
    archived = await repo(request).archive(principal.tenant_id, _id(journey_id))
    if archived is None:
        raise _not_found()
    return archived
