"""The herald-http adapter: the HTTP client of Herald's own JSON gateway API (the simulator's).

The API (batch items, answers, errors, the receipts the gateway posts to ingest) is described
and built in :mod:`shared.providers.herald_http`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from services.dispatcher.gateways.base import (
    GatewayBase,
    Outcome,
    Refused,
    Submitted,
    Unknown,
    http_attempt,
    http_error_outcome,
)
from services.dispatcher.gateways.validity import clamp_http, remaining_s
from shared.contracts import MessageOutbound, utcnow
from shared.providers.herald_http import batch_item, error_of


class HeraldHttpConfig(GatewayBase):
    kind: Literal["herald-http"] = "herald-http"
    url: str = Field(description="Base URL of the gateway's API")
    api_token: SecretStr = Field(SecretStr(""), description="Bearer token")


class HeraldHttpGateway:
    def __init__(self, config: HeraldHttpConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            headers={"Authorization": f"Bearer {config.api_token.get_secret_value()}"},
            timeout=httpx.Timeout(config.timeout_s, connect=min(5.0, config.timeout_s)),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(config.concurrency)

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _item(m: MessageOutbound) -> dict[str, Any]:
        left = remaining_s(m.expires_at, utcnow())
        # the time left (1..36,000 s, what Herald's API takes); none: no validity
        return batch_item(m, clamp_http(left) if left is not None else None)

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        size = self.config.batch_size
        chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
        results = await asyncio.gather(*(self._submit_chunk(c) for c in chunks))
        return [outcome for chunk in results for outcome in chunk]

    async def _submit_chunk(self, chunk: list[MessageOutbound]) -> list[Outcome]:
        async with self._slots:
            response = await http_attempt(self._client.post("/v1/sms/batch", json={"messages": [self._item(m) for m in chunk]}))
        if not isinstance(response, httpx.Response):
            return [response] * len(chunk)
        if response.status_code != 200:
            code, message = _error(response)
            if response.status_code == 429:
                code = "throttled"
            # a 5xx other than 503 + Retry-After may follow an accepted batch: looked up, not resent
            return [http_error_outcome(response.status_code, response.headers, code, message)] * len(chunk)
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            return [Unknown("gateway answered 200 with an unreadable body")] * len(chunk)
        by_ref = {str(r.get("client_ref")): r for r in results if isinstance(r, dict)}
        outcomes: list[Outcome] = []
        for m in chunk:
            r = by_ref.get(str(m.message_id))
            if r is None:
                outcomes.append(Unknown("gateway answer lacks this message"))
            elif "id" in r and r.get("status") == "accepted":
                outcomes.append(Submitted(str(r["id"])))
            else:
                err = r.get("error") or {}
                outcomes.append(Refused(str(err.get("code", "refused")), str(err.get("message", "")), False))
        return outcomes

    async def lookup(self, message: MessageOutbound) -> str | None:
        response = await self._client.get("/v1/sms", params={"client_ref": str(message.message_id)})
        response.raise_for_status()
        found = response.json().get("messages", [])
        return str(found[0]["id"]) if found else None


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_of(response.status_code, body, response.reason_phrase)
