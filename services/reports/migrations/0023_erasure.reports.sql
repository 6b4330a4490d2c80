-- replaces: 0023_erasure.sql
-- reports keeps an erased number's conversions for the campaign's totals, without the number.
ALTER TABLE conversions ALTER COLUMN phone_e164 DROP NOT NULL;
