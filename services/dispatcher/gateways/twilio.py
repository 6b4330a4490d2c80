"""The Twilio adapter: the HTTP client of Twilio's Messages API, answers turned into outcomes.

What Herald knows of Twilio's protocol (the form, errors, status map, callbacks, signatures)
is in :mod:`shared.providers.twilio`; status callbacks go to ingest
(``services/ingest/twilio_callbacks.py``), which puts the ``?ref=`` of the callback URL in the
receipt's ``client_ref``.

``lookup`` lists the messages sent to the number and matches the body exactly; it only ever
answers "found" (see :meth:`TwilioGateway.lookup` and docs/providers.md for why).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import UTC, timedelta
from typing import Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from services.dispatcher.gateways.base import (
    GatewayBase,
    LookupPending,
    LookupUnsupported,
    Outcome,
    Refused,
    Submitted,
    Unknown,
    http_attempt,
    http_error_outcome,
)
from services.dispatcher.gateways.validity import clamp_http, remaining_s
from shared.contracts import MessageOutbound, utcnow
from shared.providers import twilio as protocol
from shared.providers.twilio import RETRIABLE_CODES, listed_match, messages_path

log = logging.getLogger(__name__)

#: shared.providers.twilio.RETRIABLE_CODES as Twilio's error answers give them; any other
#: error goes through base.http_error_outcome.
_RETRIABLE_CODES = {str(c) for c in RETRIABLE_CODES}
LOOKUP_PAGE_SIZE = 200
LOOKUP_MAX_PAGES = 10
CLOCK_SKEW = timedelta(minutes=2)
KNOWN_SIDS_MAX = 100_000


class TwilioConfig(GatewayBase):
    kind: Literal["twilio"] = "twilio"
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="Account SID (AC...), the basic auth user")
    auth_token: SecretStr = Field(description="Auth token: basic auth password; also signs Twilio's callbacks")
    base_url: str = Field("https://api.twilio.com", description="API root (tests point it at the simulator)")
    from_number: str | None = Field(
        None, min_length=1, max_length=32, description="Default From: a Twilio number, short code or sender id"
    )
    messaging_service_sid: str | None = Field(
        None, pattern=r"^MG[0-9a-fA-F]{32}$", description="Messaging Service (MG...) that picks the sender"
    )
    status_callback_url: str | None = Field(
        None,
        description="Herald's public status callback URL, e.g. https://herald.example.com/v1/callbacks/twilio/<name>/status",
    )
    lookup_horizon_s: float = Field(
        36_000.0,
        gt=0,
        description="How long after release a message Twilio does not list yet is looked for again before it is failed",
    )

    @field_validator("base_url", "status_callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _has_sender(self) -> TwilioConfig:
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("from_number or messaging_service_sid is required")
        return self


class TwilioGateway:
    def __init__(self, config: TwilioConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            auth=httpx.BasicAuth(config.account_sid, config.auth_token.get_secret_value()),
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(config.timeout_s, connect=min(5.0, config.timeout_s)),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(config.concurrency)
        self._messages_path = messages_path(config.account_sid)
        # sid -> Herald message id, for the sids this process was given: lookup never hands
        # one message the sid of another one with the same recipient and text.
        self._known: OrderedDict[str, str] = OrderedDict()

    def __repr__(self) -> str:  # never the token
        return f"TwilioGateway(name={self.name!r}, account_sid={self.config.account_sid!r})"

    async def close(self) -> None:
        await self._client.aclose()

    def form(self, m: MessageOutbound) -> dict[str, str]:
        """The form fields of one message (To, Body, From / MessagingServiceSid, StatusCallback, ValidityPeriod)."""
        c = self.config
        left = remaining_s(m.expires_at, utcnow())
        return protocol.message_form(  # validity: the time left, in Twilio's range (1..36,000 s); none: Twilio's default
            m, from_number=c.from_number, messaging_service_sid=c.messaging_service_sid,
            status_callback_url=c.status_callback_url, validity_s=clamp_http(left) if left is not None else None,
        )

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._submit(m) for m in messages)))

    async def _submit(self, m: MessageOutbound) -> Outcome:
        async with self._slots:
            response = await http_attempt(self._client.post(self._messages_path, data=self.form(m)))
        if not isinstance(response, httpx.Response):
            return response
        if 200 <= response.status_code < 300:
            try:
                sid = response.json()["sid"]
            except (ValueError, KeyError, TypeError):
                sid = None
            if not isinstance(sid, str) or not sid:
                # A 2xx means Twilio created it; without the sid only a lookup can tell which.
                return Unknown(f"Twilio answered {response.status_code} without a message sid")
            self._remember(sid, str(m.message_id))
            return Submitted(sid)
        code, message = twilio_error(response)
        if code in _RETRIABLE_CODES:
            return Refused(code, message, True)
        return http_error_outcome(response.status_code, response.headers, code, message)

    def _remember(self, sid: str, message_id: str) -> None:
        self._known[sid] = message_id
        if len(self._known) > KNOWN_SIDS_MAX:
            self._known.popitem(last=False)

    async def lookup(self, message: MessageOutbound) -> str | None:
        """Twilio's sid for ``message``, found by listing what was sent to its number.

        Answers only "found": a unique outbound message to the same number with exactly the
        same body, created after Herald released this one, whose sid this process did not get
        for another message. It never answers None ("Twilio never got it"), because absence
        from the list proves nothing: a message queued at Twilio has no ``date_sent`` yet,
        and a body may be redacted. So: not listed -> :class:`LookupPending` (the reconciler
        asks again later) until ``lookup_horizon_s`` after release, then
        :class:`LookupUnsupported`; several candidates -> :class:`LookupUnsupported`.
        """
        since = message.released_at - CLOCK_SKEW
        params: dict[str, str] = {
            "To": message.to,
            "DateSent>": since.astimezone(UTC).date().isoformat(),  # Twilio filters by UTC day
            "PageSize": str(LOOKUP_PAGE_SIZE),
        }
        sender = message.sender or self.config.from_number
        if sender and not self.config.messaging_service_sid:
            params["From"] = sender
        candidates: list[str] = []
        url: str | None = self._messages_path
        query: dict[str, str] | None = params
        for _ in range(LOOKUP_MAX_PAGES):
            if url is None:
                break
            response = await self._client.get(url, params=query)
            if response.status_code != 200:
                code, text = twilio_error(response)
                raise RuntimeError(f"Twilio list answered {response.status_code}: {code} {text}")
            page = response.json()
            mine = str(message.message_id)
            for item in page.get("messages") or []:
                if listed_match(item, message.to, message.body, since) and self._known.get(str(item["sid"]), mine) == mine:
                    candidates.append(str(item["sid"]))
            url, query = page.get("next_page_uri") or None, None
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise LookupUnsupported(f"{len(candidates)} Twilio messages have this recipient and text: cannot tell which")
        if utcnow() - message.released_at < timedelta(seconds=self.config.lookup_horizon_s):
            raise LookupPending("Twilio does not list the message (yet)")
        raise LookupUnsupported(f"Twilio does not list the message {self.config.lookup_horizon_s:.0f}s after release")


def twilio_error(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of a Twilio error answer; ``http_<status>`` when it is not Twilio's JSON."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return protocol.error_of(response.status_code, body, response.reason_phrase)
