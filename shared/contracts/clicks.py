"""Payload of the clicks topic: someone (or something) followed a tracked link."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.envelope import Envelope


class LinkClicked(BaseModel):
    """One request on a short link, with what the link belongs to and whether a bot made it."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    code: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(description="The short link's code")
    message_id: uuid.UUID
    link_index: int = Field(ge=0, description="Which of the message's tracked links, from 0")
    url: str = Field(description="Where the link redirected")
    contact_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    variant: str | None = Field(None, max_length=32)
    journey_id: uuid.UUID | None = None
    clicked_at: AwareDatetime
    bot: bool = Field(description="A link preview, prefetch, crawler or a click too fast to be a person's")
    bot_reason: str | None = Field(
        None, description="head_request, prefetch, no_user_agent, preview_agent or too_fast"
    )
    method: Literal["GET", "HEAD"] = "GET"
    user_agent: str | None = Field(None, max_length=512)
    count: int = Field(
        1, ge=1,
        description="Clicks this event stands for: ingest folds the bot clicks of one link, reason and day within a "
        "flush into one event (the first one's time and agent); a person's click is always 1",
    )


class LinkClickedEvent(Envelope[LinkClicked]):
    type: Literal["link.clicked"] = "link.clicked"
    version: Literal[1] = 1
