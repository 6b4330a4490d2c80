-- Why a campaign is paused when Herald paused it (the launcher found the sender it names no longer
-- verified: "sender_not_verified: ..."); NULL when the tenant paused it. Cleared by any state change.
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS pause_reason text;
