-- Marketing sent through the raw API or the trigger topic: the opt-out instruction is appended
-- in the recipient's language ('append', the default) or the message is refused without one
-- ('refuse'): docs/audience.md, "Opt-out line".
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS marketing_opt_out text NOT NULL DEFAULT 'append'
    CHECK (marketing_opt_out IN ('append', 'refuse'));
