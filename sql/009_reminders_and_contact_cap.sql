-- Reminders: round r (1..reminders) of a campaign is one more invitation row per person,
-- created by `reconcile` once the first message was accepted `reminder_interval` x r ago,
-- and sent by the same claims, journal and send-time checks as the first. `round` 0 is the
-- first message; a reminder's `parent_id` is the round-0 row it follows up.
ALTER TABLE campaigns
    ADD COLUMN reminders integer NOT NULL DEFAULT 0 CHECK (reminders BETWEEN 0 AND 10),
    ADD COLUMN reminder_interval interval
        CHECK (reminder_interval IS NULL OR reminder_interval > interval '0'),
    -- Rounds every row of which exists: reconcile looks no further back.
    ADD COLUMN reminder_rounds_created integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT campaigns_reminder_interval CHECK (reminders = 0 OR reminder_interval IS NOT NULL);

ALTER TABLE invitations
    ADD COLUMN round integer NOT NULL DEFAULT 0 CHECK (round BETWEEN 0 AND 10),
    ADD COLUMN parent_id bigint REFERENCES invitations (id) ON DELETE CASCADE,
    ADD CONSTRAINT invitations_round_parent CHECK ((round = 0) = (parent_id IS NULL));
ALTER TABLE invitations DROP CONSTRAINT invitations_campaign_id_email_hash_key;
ALTER TABLE invitations ADD CONSTRAINT invitations_campaign_id_email_hash_round_key
    UNIQUE (campaign_id, email_hash, round);
-- The first messages a round follows up, by when they were accepted.
CREATE INDEX invitations_sent_first ON invitations (campaign_id, sent_at)
    WHERE round = 0 AND state = 'sent';
CREATE INDEX invitations_parent ON invitations (parent_id) WHERE parent_id IS NOT NULL;

-- CONTACT_CAP: one row per first survey invitation started to an address, by keyed hash
-- (never the address, so erasure and retention's purge of invitations leave the count).
CREATE TABLE contacts (
    invitation_id bigint PRIMARY KEY,
    email_hash    bytea NOT NULL,
    counted_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contacts_address ON contacts (email_hash, counted_at);

GRANT SELECT, INSERT, DELETE ON contacts TO survey_worker;
GRANT SELECT ON contacts TO privacy_officer;
-- Retention deletes feedback rows past every window that reads them.
GRANT DELETE ON feedback TO survey_worker;
