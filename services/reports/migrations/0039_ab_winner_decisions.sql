-- ab_winner_decisions (reports): when reports last published the A/B winner of a campaign
-- (herald.campaigns.winners.v1, applied by ingest, which owns campaigns). One instance publishes
-- each decision: the row is taken with the decision and published in the same transaction; a
-- campaign still testing after HERALD_AB_WINNER_REPUBLISH_S (ingest's lane was down, or the event
-- was lost) is judged and published again, which ingest applies at most once.
CREATE TABLE ab_winner_decisions (
    campaign_id uuid PRIMARY KEY,
    decided_at  timestamptz NOT NULL
);
