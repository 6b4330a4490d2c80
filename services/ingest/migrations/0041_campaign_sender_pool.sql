-- A campaign may send from a sender pool instead of one sender (docs/senders.md, "Pools and
-- sticky senders"): the launcher picks each contact's sender, sticky per recipient.
ALTER TABLE campaigns ADD COLUMN sender_pool text;
