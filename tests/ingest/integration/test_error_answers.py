"""Error answers through ingest's real app: a wrong content type on JSON routes is 415, and the
OpenAPI document lists the error catalogue."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from shared.errors import CATALOGUE
from shared.kafka import Publisher, make_producer
from tests.conftest import Tenant

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def app_and_client(env, pool) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    settings = IngestSettings()
    producer = make_producer(settings, "test-ingest-errors")
    await producer.start()
    repository = IngestRepository(pool)

    app = create_app(settings, pool, Acceptor(repository, settings), Publisher(producer, env.prefix, "ingest"), repository)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as c:
        yield app, c
    await producer.stop()


MSG = json.dumps({"to": "+34600000001", "body": "Your code is 123456"})


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/batch", "/v1/templates"])
async def test_a_wrong_content_type_on_a_json_route_is_415(app_and_client, tenant: Tenant, path: str) -> None:
    _, client = app_and_client
    body = MSG if path == "/v1/messages" else json.dumps({"messages": [json.loads(MSG)]})
    r = await client.post(path, content=body, headers={**tenant.headers, "content-type": "text/plain"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type"), r.text
    assert "application/json" in r.json()["error"]["message"]


async def test_json_with_a_charset_is_read_and_no_content_type_is_415(app_and_client, tenant: Tenant) -> None:
    _, client = app_and_client
    r = await client.post("/v1/messages", content=MSG,
                          headers={**tenant.headers, "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 202, r.text
    for path, body in (("/v1/messages", MSG), ("/v1/messages/batch", json.dumps({"messages": [json.loads(MSG)]}))):
        r = await client.post(path, content=body, headers=tenant.headers)  # no content-type at all
        assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type"), r.text
    # a query-parameter problem with a JSON body stays a 422
    r = await client.get("/v1/contacts?limit=0", headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_failed")


async def test_the_key_is_checked_before_the_content_type(app_and_client) -> None:
    _, client = app_and_client
    r = await client.post("/v1/messages", content=MSG, headers={"content-type": "text/plain"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_api_key")


async def test_openapi_lists_the_error_codes(app_and_client) -> None:
    app, _ = app_and_client
    schema = app.openapi()
    error = schema["components"]["schemas"]["Error"]
    codes = error["properties"]["error"]["properties"]["code"]["enum"]
    assert set(codes) == set(CATALOGUE)
    for code in ("unparseable_number", "empty_batch", "not_suppressed", "signature_invalid", "version_conflict",
                 "unsupported_media_type"):
        assert code in codes and code in error["description"]
    send = schema["paths"]["/v1/messages"]["post"]["responses"]
    assert send["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "unparseable_number" in send["422"]["description"] and "415" in send
