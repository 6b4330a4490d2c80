"""Payload of the journey-sends topic: a journey's send step, for ingest to accept like any message."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from shared.contracts.envelope import Envelope
from shared.contracts.messages import MAX_BODY_CHARS
from shared.statuses import MessageType


class JourneySendRequested(BaseModel):
    """A journey run reached a send step. The scheduler rendered the text (it holds the run's
    trigger and event properties and the contact's fields); ingest accepts it as it accepts the
    API's and the trigger topic's messages (sender registry, sender pools, geo permissions, short
    links, the sender's throughput) and publishes ``messages.accepted`` with ``source: journey``,
    or refuses it (``rejected.v1`` and a ``failed`` status with the reason for the message).

    ``message_id`` is the journey's (``uuid5(run_id, step index)``): ingest accepts an id once,
    so a send published again (a scheduler crash between publish and commit, a redelivery) is
    one message."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    message_id: uuid.UUID = Field(description="The message's id, chosen by the journey: accepted once")
    to: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(description="The contact's number, E.164")
    body: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY_CHARS)] = Field(
        description="The text, rendered for the contact by the scheduler (opt-out line included for marketing)"
    )
    type: MessageType = Field(description="The step's purpose (or its template's): transactional or marketing")
    sender: str | None = Field(None, description="The step's (or its template's) sender; checked against the registry")
    sender_pool: str | None = Field(None, description="The step's sender pool: the recipient keeps its sticky sender")
    metadata: dict[str, str] = Field(default_factory=dict, description="journey_step, journey_run")
    contact_id: uuid.UUID | None = Field(None, description="The contact the run belongs to")
    journey_id: uuid.UUID
    template_id: uuid.UUID | None = Field(None, description="The step's template, when it sends one")
    requested_at: AwareDatetime = Field(description="When the step was reached")

    @model_validator(mode="after")
    def _sender_or_pool(self) -> JourneySendRequested:
        if self.sender is not None and self.sender_pool is not None:
            raise PydanticCustomError("sender_or_pool", "give a sender or a sender_pool, not both")
        return self


class JourneySendEvent(Envelope[JourneySendRequested]):
    type: Literal["journey.send_requested"] = "journey.send_requested"
    version: Literal[1] = 1
