"""The campaign-winner event: its contract, and which events of a batch ingest applies."""

from __future__ import annotations

import uuid

from services.ingest.campaigns.winners import decisions
from shared.contracts import CampaignWinnerDecided, CampaignWinnerEvent, MessageCommand, MessageCommandEvent, utcnow
from shared.kafka import Incoming
from shared.topics import ALL, CAMPAIGN_WINNERS


def winner(campaign: uuid.UUID, name: str | None) -> Incoming:
    event = CampaignWinnerEvent(tenant="acme", payload=CampaignWinnerDecided(
        campaign_id=campaign, winner=name, detail={"picked_by": "significant" if name else "no_data"}, decided_at=utcnow()))
    return Incoming(CAMPAIGN_WINNERS, event, None)  # the handler never reads the record


def test_the_first_decision_of_each_campaign_is_applied() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    other = Incoming(CAMPAIGN_WINNERS, MessageCommandEvent(
        tenant="acme", payload=MessageCommand(message_id=uuid.uuid4(), action="cancel")), None)
    chosen = decisions([winner(a, "A"), other, winner(b, None), winner(a, "B")])
    assert [(e.payload.campaign_id, e.payload.winner) for e in chosen] == [(a, "A"), (b, None)]


def test_the_event_round_trips_and_is_catalogued() -> None:
    event = winner(uuid.uuid4(), "A").event
    again = CampaignWinnerEvent.model_validate_json(event.model_dump_json())
    assert again == event and again.type == "campaign.winner_decided" and again.version == 1
    assert CAMPAIGN_WINNERS in ALL and CAMPAIGN_WINNERS.model is CampaignWinnerEvent
    assert CAMPAIGN_WINNERS.producers[0].startswith("reports") and CAMPAIGN_WINNERS.consumers[0].startswith("ingest")
