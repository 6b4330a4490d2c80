"""Payloads of the subject-access topics: gather everything a tenant's services hold about a
number (docs/data-map.md, subject-access export)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.envelope import Envelope

ExportService = Literal["ingest", "scheduler", "dispatcher", "reports"]


class SubjectAccessRequested(BaseModel):
    """One export, by number (and contact when asked by contact). Every service that holds numbers
    or texts gathers its own rows about the number and publishes them as parts."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    export_id: uuid.UUID = Field(description="The export's id (ingest's subject_access_exports row)")
    phone: Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")] = Field(
        description="The number whose data is gathered, E.164 (the topic's retention is short)"
    )
    contact_id: uuid.UUID | None = Field(None, description="The contact with this number, when there is one")
    requested_by: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="Who asked: the API key id"
    )
    requested_at: AwareDatetime


class SubjectAccessRequestedEvent(Envelope[SubjectAccessRequested]):
    type: Literal["number.subject_access_requested"] = "number.subject_access_requested"
    version: Literal[1] = 1


class SubjectAccessPart(BaseModel):
    """One chunk of what one service holds about the number: rows by table. A service's part is
    split into chunks so every event stays well under the broker's message size limit; ingest
    assembles the chunks of one gathering (``attempt``) once all ``chunks`` arrived."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    export_id: uuid.UUID
    service: ExportService = Field(description="The service whose tables the rows come from")
    attempt: uuid.UUID = Field(description="One gathering of the part (a redelivered request gathers again: "
                                           "ingest uses the first complete attempt)")
    chunk: int = Field(ge=0, description="This chunk's index, from 0")
    chunks: int = Field(ge=1, le=100_000, description="How many chunks the attempt has")
    tables: dict[str, list[dict[str, Any]]] = Field(description="Rows by table (JSON values; times ISO 8601)")


class SubjectAccessPartEvent(Envelope[SubjectAccessPart]):
    type: Literal["number.subject_access_part"] = "number.subject_access_part"
    version: Literal[1] = 1
