"""The envelope every Kafka event travels in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,62}$"
SYSTEM_TENANT = "_system"  # events that belong to no tenant (gateway receipts, rejections of unreadable input)
# Deterministic event ids (uuid5) make re-published events land once in the timeline.
EVENT_NAMESPACE = uuid.UUID("6f0b8a9e-7a4c-4c1e-9d55-2f3c0e4a8b71")

P = TypeVar("P", bound=BaseModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


def derived_event_id(*parts: object) -> uuid.UUID:
    """An event id that is the same every time the same fact is published again."""
    return uuid.uuid5(EVENT_NAMESPACE, ":".join(str(p) for p in parts))


class Envelope(BaseModel, Generic[P]):
    """Event id, type, version, occurred-at, tenant and trace id around a typed payload."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    tenant: Annotated[str, StringConstraints(pattern=rf"{TENANT_PATTERN}|^{SYSTEM_TENANT}$")]
    trace_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        default_factory=lambda: uuid.uuid4().hex
    )
    payload: P
