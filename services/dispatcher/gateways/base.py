"""What the dispatcher needs from a gateway, and the three ways a submission can end."""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import DeliveryReceipt, InboundMessage, MessageOutbound


class GatewayBase(BaseModel):
    """Settings every gateway kind shares. Each adapter module defines its subclass with ``kind``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Unique name, used in routes, receipts and metrics")
    rate_per_s: float = Field(200.0, gt=0, description="Segments per second this gateway allows")
    burst: float | None = Field(None, gt=0, description="Token bucket size; defaults to one second of rate")
    batch_size: int = Field(100, ge=1, le=1000, description="Messages handed to the adapter per call")
    concurrency: int = Field(8, ge=1, le=256, description="Requests (or SMPP window slots) in flight at once")
    timeout_s: float = Field(10.0, gt=0, description="Answer timeout of one request")


@dataclass(frozen=True, slots=True)
class Submitted:
    gateway_message_id: str
    part_ids: tuple[str, ...] = ()  # every part's id when the gateway sends several (SMPP concatenation)


@dataclass(frozen=True, slots=True)
class Refused:
    """The gateway said no. ``retriable`` errors (throttling, outage) may be tried again."""

    code: str
    message: str
    retriable: bool


@dataclass(frozen=True, slots=True)
class Unknown:
    """The request may or may not have reached the gateway (timeout after sending).

    Retrying blindly could send the SMS twice, so the claim is left for the reconciler,
    which asks the gateway (``lookup``) before doing anything else.
    """

    message: str


Outcome = Submitted | Refused | Unknown


async def http_attempt(request: Awaitable[httpx.Response]) -> httpx.Response | Refused | Unknown:
    """One HTTP request to a gateway, its transport failure told apart: nothing reached the
    gateway (no connection, or none free in the pool): Refused and safe to try again; failed
    after sending (a read timeout, a dropped connection): Unknown, looked up, never resent."""
    try:
        return await request
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return Refused("connection_error", f"{type(exc).__name__}: {exc}", True)
    except httpx.HTTPError as exc:
        return Unknown(f"{type(exc).__name__} after sending: {exc}")

#: HTTP answers that say the request was not acted on and may be sent again at once.
SAFE_TO_RETRY_HTTP = frozenset({429})


def http_error_outcome(
    status: int, headers: Mapping[str, str], code: str, message: str, retriable: Collection[int] = SAFE_TO_RETRY_HTTP,
) -> Refused | Unknown:
    """The outcome of a non-2xx answer to a submission that was sent.

    Only a "not now" that guarantees nothing was done may be retried (possibly on another
    gateway): 429 (and the ``retriable`` statuses a provider documents so), or 503 with a
    ``Retry-After``. A 408 or any other 5xx (500, 502, 504: a proxy that timed out while the
    provider kept working...) may come after the provider accepted the message: the outcome is
    unknown and must be looked up, never resent blindly. Other 4xx are refusals.
    """
    if status in retriable or (status == 503 and headers.get("retry-after")):
        return Refused(code, message, True)
    if status >= 500 or status == 408:
        return Unknown(f"HTTP {status} after sending ({code}: {message})"[:500])
    return Refused(code, message, False)


class LookupUnsupported(Exception):
    """The gateway cannot tell whether it received a message."""


class LookupPending(Exception):
    """The gateway cannot tell yet (e.g. the message is still queued there): ask again later."""


class EventSink(Protocol):
    """Where a gateway connection hands what arrives on it (SMPP deliver_sm, for instance).

    Both calls return once the events are durably published, so the adapter may then
    acknowledge them to the carrier (at-least-once: a crash before that means redelivery).
    """

    async def receipts(self, items: list[DeliveryReceipt]) -> None: ...

    async def inbound(self, items: list[InboundMessage]) -> None: ...


class Gateway(Protocol):
    name: str

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        """Submit messages; one outcome per message, in order. Never raises for gateway errors."""
        ...

    async def lookup(self, message: MessageOutbound) -> str | None:
        """The gateway's id for a message it received, None if it never got it.

        Raises :class:`LookupUnsupported` when the gateway cannot answer.
        """
        ...

    async def close(self) -> None: ...
