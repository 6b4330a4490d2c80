"""ingest's routes live on module-level routers that get what they need from ``app.state``
(services/ingest/deps.py): each mounts alone, and create_app mounts them in the same order
with the same documented operations."""

from __future__ import annotations

from fastapi import FastAPI

from services.ingest import api, deps
from services.ingest.api import create_app
from services.ingest.audience.contacts_api import router as audience_router
from services.ingest.campaigns.api import router as campaigns_router
from services.ingest.settings import IngestSettings


def operations(app: FastAPI) -> list[tuple[str, str, str]]:
    return [(path, method, op["operationId"]) for path, item in app.openapi()["paths"].items()
            for method, op in item.items()]


def test_a_router_mounts_alone_on_an_app_whose_state_holds_its_dependencies() -> None:
    app = FastAPI()
    deps.install(app, IngestSettings(), None, None)
    app.include_router(campaigns_router)
    ops = operations(app)
    assert ("/v1/campaigns/{campaign_id}/launch", "post", "launch_v1_campaigns__campaign_id__launch_post") in ops
    assert ("/v1/policy", "put", "put_policy_v1_policy_put") in ops
    assert all(not p.startswith("/v1/contacts") for p, _, _ in ops)


def test_create_app_mounts_the_routers_in_order_after_the_message_routes() -> None:
    app = create_app(IngestSettings(), None, None, None, None)  # type: ignore[arg-type]
    paths = [p for p, _, _ in operations(app)]
    first = [p for p, _, _ in operations(_alone(api.router))]
    assert paths[:len(first)] == first, "the message routes come first (single sends are the hot path)"
    for router in (audience_router, campaigns_router):
        own = [p for p, _, _ in operations(_alone(router))]
        start = paths.index(own[0])
        assert paths[start:start + len(own)] == own


def test_each_app_documents_its_own_batch_limit() -> None:
    """The routers are shared; the batch limit is a setting: two apps, two documents."""
    def max_items(limit: int) -> int:
        schema = create_app(IngestSettings(batch_max_messages=limit), None, None, None, None).openapi()  # type: ignore[arg-type]
        body = schema["paths"]["/v1/messages/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return body["properties"]["messages"]["maxItems"]

    assert (max_items(500), max_items(10_000), max_items(500)) == (500, 10_000, 500)


def test_state_accessors_make_derived_objects_once_per_app() -> None:
    class Req:
        def __init__(self, app: FastAPI) -> None:
            self.app = app

    a, b = FastAPI(), FastAPI()
    deps.install(a, IngestSettings(erasure_keys={}), None, None)
    deps.install(b, IngestSettings(webhook_allow_private=True), None, None)
    assert deps.egress_policy(Req(a)) is deps.egress_policy(Req(a))  # type: ignore[arg-type]
    assert deps.egress_policy(Req(b)).allow_private and not deps.egress_policy(Req(a)).allow_private  # type: ignore[arg-type]
    assert not deps.erasure_keyring(Req(a)).enabled  # type: ignore[arg-type]


def _alone(router) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    return app
