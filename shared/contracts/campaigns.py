"""Payload of the campaign-winners topic: the A/B winner reports picked, for ingest to apply."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.envelope import Envelope


class CampaignWinnerDecided(BaseModel):
    """reports judged a campaign's A/B test once its ``decide_at`` passed. ingest owns the
    campaign: it stores the winner and its detail and starts the winner phase (``phase =
    'winner'``, ``state = 'running'``) if the campaign is still ``testing``; otherwise the event
    changes nothing (a redelivery, or a campaign paused or cancelled meanwhile)."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # tolerant reader (docs/topics.md)

    campaign_id: uuid.UUID
    winner: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        description="The winning variant's name; null when no variant had any trials (the rest gets the split)"
    )
    detail: dict[str, Any] = Field(
        description="The test's numbers and how the winner was picked (picked_by, metric, comparisons, note, decided_at)"
    )
    decided_at: AwareDatetime


class CampaignWinnerEvent(Envelope[CampaignWinnerDecided]):
    type: Literal["campaign.winner_decided"] = "campaign.winner_decided"
    version: Literal[1] = 1
