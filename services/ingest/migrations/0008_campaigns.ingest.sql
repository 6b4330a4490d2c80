-- replaces: 0008_campaigns.sql
-- Campaigns (ingest writes; scheduler and dispatcher read the state), tenant sending
-- policy (consent mode, frequency caps) and the scheduler's record of marketing releases
-- that frequency caps count. docs/campaigns.md explains the model.

-- Tenant policy, read by the scheduler (cached a few seconds).
--   marketing_consent: 'required'  a marketing message needs a contact with marketing consent
--                      'opt_out'   only a recorded refusal (or a suppression) blocks it
--   frequency_caps:    [{"max": 1, "window_s": 86400}, {"max": 4, "window_s": 604800}]
ALTER TABLE tenants ADD COLUMN marketing_consent text NOT NULL DEFAULT 'required'
    CHECK (marketing_consent IN ('required', 'opt_out'));
ALTER TABLE tenants ADD COLUMN frequency_caps jsonb NOT NULL DEFAULT '[]';

CREATE TABLE campaigns (
    tenant_id       text NOT NULL REFERENCES tenants (tenant_id),
    campaign_id     uuid NOT NULL DEFAULT gen_random_uuid(),
    name            text NOT NULL,
    segment_id      uuid,                      -- the named segment it was created with, if any
    segment_filter  text NOT NULL,             -- the filter (normalised) the audience is read with
    sender          text,                      -- overrides the templates' sender
    variants        jsonb NOT NULL,            -- [{"name": "A", "template_id": "…", "percent": 50}, …]
    frequency_caps  jsonb NOT NULL DEFAULT '[]',  -- applied on top of the tenant's caps
    test_numbers    text[] NOT NULL DEFAULT '{}',
    send_at         timestamptz,               -- launch at this time (NULL: when launched)
    -- draft → scheduled (send_at ahead) → running → completed; paused ⇄ running; cancelled is final.
    -- With an A/B test that picks a winner: running (test share) → testing (waiting for results)
    -- → running (the winner to the rest) → completed.
    state           text NOT NULL DEFAULT 'draft'
        CHECK (state IN ('draft', 'scheduled', 'running', 'testing', 'paused', 'completed', 'cancelled')),
    -- {"test_percent": 20, "metric": "click_rate", "wait_s": 14400, "min_sample": 100} or NULL.
    -- Contacts whose bucket falls in the test share get the variants by their split; the rest
    -- wait for the winner, which reports picks (two-proportion test) after wait_s.
    ab_test         jsonb,
    phase           text NOT NULL DEFAULT 'test' CHECK (phase IN ('test', 'winner')),
    decide_at       timestamptz,               -- testing: when reports judges the variants
    winner          text,                      -- the variant name sent to the rest
    winner_detail   jsonb,                     -- the test's numbers (rates, z, p-value, samples)
    -- The fan-out: contacts are read in contact id order, a page at a time; ``cursor`` is the
    -- last contact published, so a launcher that dies is followed by another from there.
    cursor          uuid,
    fanned_out_at   timestamptz,               -- every page published
    published       bigint NOT NULL DEFAULT 0, -- messages published (targeted)
    launcher        text,                      -- the ingest instance fanning it out
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    launched_at     timestamptz,
    paused_at       timestamptz,
    paused_from     text,                      -- the state a resume returns to
    cancelled_at    timestamptz,
    PRIMARY KEY (tenant_id, campaign_id),
    UNIQUE (campaign_id)
);
CREATE INDEX campaigns_due ON campaigns (state, send_at) WHERE state IN ('scheduled', 'running', 'testing');
CREATE INDEX campaigns_updated ON campaigns (updated_at);
