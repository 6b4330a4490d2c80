"""The sender registry over HTTP: a tenant requests and lists its senders (docs/senders.md).

A requested sender is ``pending`` until an operator verifies it (``herald admin sender verify``):
only verified senders may be named as a message's ``sender``. Requests and removals are audited
like the operator's actions (actor ``api:<key id>``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared import tenant_admin
from shared.api import ApiError, principal_dependency
from shared.auth import Principal
from shared.senders import normalise


class SenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sender: str = Field(pattern=r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$",
                        description="A +E.164 number, a short code, or an alphanumeric id (up to 11 characters)")
    kind: Literal["long_code", "toll_free", "short_code", "alphanumeric"] | None = Field(
        None, description="Default: from the sender's form (toll-free from the numbering plan)")
    countries: list[Annotated[str, Field(min_length=2, max_length=2)]] | None = Field(
        None, max_length=250, description="Destinations it may send to (ISO 3166-1 alpha-2); absent: any the country rules allow")
    capabilities: list[Literal["sms", "mo"]] = Field(
        default_factory=lambda: ["sms"], min_length=1, description="sms: it sends; mo: replies to it reach the tenant")
    scope: str | None = Field(None, max_length=64, description="Replies: a STOP to this sender opts out of this scope only")
    registrations: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="ten_dlc {brand_id, campaign_id}, toll_free_verification {verification_id}, dlt {entity_id}")


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "sender": row["sender"], "kind": row["kind"], "state": row["state"], "countries": row["countries"],
        "capabilities": row["capabilities"], "scope": row["scope"], "registrations": row["registrations"],
        "rate_per_s": row["rate_per_s"], "burst": row["burst"],
        "note": row["note"], "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat(),
    }


class PoolBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    senders: list[Annotated[str, Field(pattern=r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$")]] = Field(
        min_length=1, max_length=100, description="The tenant's senders, in order of preference (fallback order)")
    geo_match: bool = Field(False, description="Prefer a sender of the recipient's country (US/CA numbers: of its area code)")


def _pool_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "senders": row["senders"], "geo_match": row["geo_match"],
            "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat()}


router = APIRouter(tags=["senders"])  # create_app mounts it after the message routes
reader = Depends(principal_dependency("senders:read"))
writer = Depends(principal_dependency("senders:write"))

def pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool

@router.post("/v1/senders", status_code=201, responses={401: {}, 403: {}, 409: {}, 422: {}})
async def request_sender(body: SenderRequest, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Request a sender: it is ``pending`` until an operator verifies it."""
    async with pool(request).acquire() as conn:
        try:
            row = await tenant_admin.sender_add(
                conn, f"api:{principal.key_id}", principal.tenant_id, body.sender, kind=body.kind,
                countries=body.countries, capabilities=body.capabilities, state="pending", scope=body.scope,
                registrations=body.registrations,
            )
        except ValueError as exc:
            if "already registered" in str(exc):
                raise ApiError(409, "sender_exists", str(exc)) from None
            raise ApiError(422, "validation_failed", str(exc),
                           [{"loc": "body", "code": "validation_failed", "msg": str(exc)}]) from None
    return _view(row)

@router.get("/v1/senders", responses={401: {}, 403: {}})
async def list_senders(
    request: Request, principal: Principal = reader,
    state: Literal["pending", "verified", "suspended"] | None = Query(None),
) -> dict[str, Any]:
    """The tenant's senders, with their state."""
    async with pool(request).acquire() as conn:
        rows = await tenant_admin.sender_list(conn, principal.tenant_id, state)
    return {"senders": [_view(r) for r in rows]}

async def own(request: Request, principal: Principal, sender: str) -> dict[str, Any]:
    async with pool(request).acquire() as conn:
        found = await tenant_admin.sender_get(conn, principal.tenant_id, sender)
    if found is None:
        raise ApiError(404, "sender_not_found", f"no sender {sender!r} for your tenant")
    return found

@router.get("/v1/senders/{sender}", responses={401: {}, 403: {}, 404: {}})
async def get_sender(request: Request, sender: str = Path(max_length=32),
                     principal: Principal = reader) -> dict[str, Any]:
    return _view(await own(request, principal, sender))

@router.delete("/v1/senders/{sender}", status_code=204, responses={401: {}, 403: {}, 404: {}})
async def remove_sender(request: Request, sender: str = Path(max_length=32), principal: Principal = writer) -> None:
    """Withdraw a sender: messages naming it are refused from the next request on."""
    await own(request, principal, sender)
    async with pool(request).acquire() as conn:
        await tenant_admin.sender_remove(conn, f"api:{principal.key_id}", principal.tenant_id, normalise(sender))


PoolName = Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")


@router.put("/v1/sender-pools/{name}", responses={401: {}, 403: {}, 422: {}})
async def set_pool(body: PoolBody, request: Request, name: str = PoolName, principal: Principal = writer) -> dict[str, Any]:
    """Create or replace a sender pool (docs/senders.md, "Pools and sticky senders"): each sender one
    of the tenant's own; a message names it as ``sender_pool``. Recipients keep their sticky sender
    while it stays in the pool and may send."""
    async with pool(request).acquire() as conn:
        try:
            row = await tenant_admin.pool_set(conn, f"api:{principal.key_id}", principal.tenant_id, name, body.senders,
                                       body.geo_match)
        except LookupError as exc:
            raise ApiError(422, "sender_not_registered", str(exc),
                           [{"loc": "body.senders", "code": "sender_not_registered", "msg": str(exc)}]) from None
        except ValueError as exc:
            raise ApiError(422, "validation_failed", str(exc),
                           [{"loc": "body", "code": "validation_failed", "msg": str(exc)}]) from None
    return _pool_view(row)


@router.get("/v1/sender-pools", responses={401: {}, 403: {}})
async def list_pools(request: Request, principal: Principal = reader) -> dict[str, Any]:
    async with pool(request).acquire() as conn:
        rows = await tenant_admin.pool_list(conn, principal.tenant_id)
    return {"sender_pools": [_pool_view(r) for r in rows]}


@router.get("/v1/sender-pools/{name}", responses={401: {}, 403: {}, 404: {}})
async def get_pool(request: Request, name: str = PoolName, principal: Principal = reader) -> dict[str, Any]:
    async with pool(request).acquire() as conn:
        row = await tenant_admin.pool_get(conn, principal.tenant_id, name)
    if row is None:
        raise ApiError(404, "sender_pool_not_found", f"no sender pool {name!r} for your tenant")
    return _pool_view(row)


@router.delete("/v1/sender-pools/{name}", status_code=204, responses={401: {}, 403: {}, 404: {}})
async def remove_pool(request: Request, name: str = PoolName, principal: Principal = writer) -> None:
    """Delete a pool and its recipients' sticky senders: messages naming it are refused from the next request on."""
    async with pool(request).acquire() as conn:
        if not await tenant_admin.pool_remove(conn, f"api:{principal.key_id}", principal.tenant_id, name):
            raise ApiError(404, "sender_pool_not_found", f"no sender pool {name!r} for your tenant")
