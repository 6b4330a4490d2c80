"""Payload of the erasures topic: erase everything a tenant's services hold about a number."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.envelope import Envelope


class ErasureRequested(BaseModel):
    """One erasure, by contact or by number. Every service that holds the number applies it to
    its own tables in one transaction and writes its row of ``erasure_audit`` (docs/data-map.md)."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    erasure_id: uuid.UUID = Field(description="The erasure's id (audit rows are keyed by it and the service)")
    phone: Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")] = Field(
        description="The number to erase, E.164 (the only place it travels; the topic's retention is short)"
    )
    contact_id: uuid.UUID | None = Field(None, description="The erased contact, when the erasure was by contact")
    phone_hash: Annotated[str, StringConstraints(min_length=1, max_length=96)] = Field(
        description="The keyed hash of tenant and number kept for suppression: what audit rows record"
    )
    requested_by: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="Who asked: the API key id"
    )
    requested_at: AwareDatetime


class ErasureRequestedEvent(Envelope[ErasureRequested]):
    type: Literal["number.erasure_requested"] = "number.erasure_requested"
    version: Literal[1] = 1
