"""The webhook adapter: a generic JSON provider, one message per request, shaped by configuration.

Each message becomes one JSON request to ``url`` built from ``template`` plus ``static_fields``
(:mod:`shared.providers.webhook` builds and signs the body and reads answers). A 2xx answer
carries the provider's id at ``id_path`` (dotted, list indexes allowed: ``data.id``,
``messages.0.id``). Optional: a bearer token, fixed (secret) headers, and an
``X-Herald-Signature`` HMAC-SHA256 over the exact body bytes (the provider checks it with
:func:`shared.signatures.verify`).

``lookup`` needs a ``lookup_url`` template (``{reference}``, ``{to}``); without one it raises
:class:`~services.dispatcher.gateways.base.LookupUnsupported`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from services.dispatcher.gateways.base import (
    GatewayBase,
    LookupUnsupported,
    Outcome,
    Submitted,
    Unknown,
    http_attempt,
    http_error_outcome,
)
from services.dispatcher.gateways.validity import remaining_s
from shared.contracts import MessageOutbound, utcnow
from shared.providers.webhook import (
    NOT_JSON,
    SIGNATURE_HEADER,
    WebhookTemplate,
    build_payload,
    encode_body,
    error_of,
    free,
    id_at,
    signature_headers,
)

DEFAULT_RETRIABLE = [429]


class WebhookConfig(GatewayBase):
    kind: Literal["webhook"] = "webhook"
    url: str = Field(description="Where each message is sent")
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra request headers (values are secret)")
    bearer_token: SecretStr | None = Field(None, description="Sent as Authorization: Bearer <token>")
    signing_secret: SecretStr | None = Field(None, description="Sign each body with HMAC-SHA256 (X-Herald-Signature)")
    signature_header: str = Field(SIGNATURE_HEADER, min_length=1)
    template: WebhookTemplate = Field(default_factory=WebhookTemplate)
    static_fields: dict[str, Any] = Field(default_factory=dict, description="Fixed fields added to every body")
    default_sender: str | None = Field(None, description="Sender when the message has none")
    id_path: str = Field("id", min_length=1, description="Dotted path of the provider's message id in a 2xx answer")
    retriable_statuses: list[int] = Field(
        default_factory=lambda: list(DEFAULT_RETRIABLE),
        description="Statuses after which the provider surely did nothing (503 with Retry-After always counts)",
    )
    lookup_url: str | None = Field(
        None, description="GET template with {reference} and {to}; 404 or no id = never received"
    )
    lookup_id_path: str | None = Field(None, description="Id path in the lookup answer; default id_path")

    @field_validator("url", "lookup_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WebhookConfig:
        names = self.template.names()
        if len(set(names)) != len(names):
            raise ValueError("template field names must differ")
        for a in names:
            if any(b.startswith(a + ".") for b in names):
                raise ValueError(f"template field {a!r} cannot also hold another field")
            if not free(self.static_fields, a):
                raise ValueError(f"static_fields already hold template field {a!r}")
        if self.lookup_url is not None:
            try:
                self.lookup_url.format(reference="x", to="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"lookup_url may only use {{reference}} and {{to}}: {exc}") from None
        return self


class WebhookGateway:
    def __init__(self, config: WebhookConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        headers = {k: v.get_secret_value() for k, v in config.headers.items()}
        if config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=min(5.0, config.timeout_s)),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(config.concurrency)
        self._retriable = set(config.retriable_statuses)

    def __repr__(self) -> str:  # never the headers or secrets
        return f"WebhookGateway(name={self.name!r}, url={self.config.url!r})"

    async def close(self) -> None:
        await self._client.aclose()

    def payload(self, m: MessageOutbound) -> dict[str, Any]:
        c = self.config
        return build_payload(c.template, c.static_fields, m, default_sender=c.default_sender,
                             validity_s=remaining_s(m.expires_at, utcnow()))

    def body_and_headers(self, m: MessageOutbound) -> tuple[bytes, dict[str, str]]:
        body = encode_body(self.payload(m))
        secret = self.config.signing_secret
        return body, signature_headers(body, secret.get_secret_value() if secret is not None else None,
                                       self.config.signature_header, int(time.time()))

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._submit(m) for m in messages)))

    async def _submit(self, m: MessageOutbound) -> Outcome:
        body, headers = self.body_and_headers(m)
        async with self._slots:
            response = await http_attempt(self._client.request(self.config.method, self.config.url, content=body,
                                                               headers=headers))
        if not isinstance(response, httpx.Response):
            return response
        if 200 <= response.status_code < 300:
            try:
                found = id_at(response.json(), self.config.id_path)
            except ValueError:
                found = None
            if found is None:
                return Unknown(f"answer {response.status_code} has no id at {self.config.id_path!r}")
            return Submitted(found)
        code, message = _error(response)
        return http_error_outcome(response.status_code, response.headers, code, message, self._retriable)

    async def lookup(self, message: MessageOutbound) -> str | None:
        template = self.config.lookup_url
        if template is None:
            raise LookupUnsupported(f"gateway {self.name!r} has no lookup_url")
        url = template.format(reference=quote(str(message.message_id), safe=""), to=quote(message.to, safe=""))
        response = await self._client.get(url)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            code, text = _error(response)
            raise RuntimeError(f"lookup answered {response.status_code}: {code} {text}")
        return id_at(response.json(), self.config.lookup_id_path or self.config.id_path)


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = NOT_JSON
    return error_of(response.status_code, body, response.text, response.reason_phrase)
