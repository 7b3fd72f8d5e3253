-- Completion: the survey platform tells us an invitation was answered (POST
-- /webhooks/completion, `survey-worker complete`). completed_at is set once, by the first
-- completion; reminders skip invitations that have it.
ALTER TABLE invitations ADD COLUMN completed_at timestamptz;
-- `status` counts a campaign's completed invitations.
CREATE INDEX invitations_completed ON invitations (campaign_id) WHERE completed_at IS NOT NULL;

-- A completion names an invitation by its survey reference, the `r=` of its survey link: an
-- HMAC of the invitation id under ADDRESS_HASH_KEY (worker/links.py), which Postgres cannot
-- compute without the key. The app stores each reference's first 8 bytes (worker/completion.py
-- confirms a match with the whole reference), a campaign at a time; survey_ref_campaigns
-- lists the campaigns done.
CREATE TABLE survey_refs (
    invitation_id bigint PRIMARY KEY,
    ref_prefix    bigint NOT NULL
);
CREATE INDEX survey_refs_prefix ON survey_refs (ref_prefix);

-- Deleting invitations (retention's purge) deletes their references. A statement trigger
-- rather than a foreign key: a foreign key would check every reference stored, which
-- made indexing a campaign 70 % slower.
CREATE FUNCTION survey_refs_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM survey_refs r USING gone g WHERE r.invitation_id = g.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER invitations_forget_survey_refs AFTER DELETE ON invitations
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION survey_refs_forget();

CREATE TABLE survey_ref_campaigns (
    campaign_id bigint PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    indexed_at  timestamptz NOT NULL DEFAULT now()
);

-- Standard Webhooks message ids of completion webhooks received: the same id twice counts
-- once. Kept a week (longer than senders retry), then deleted by the endpoint.
CREATE TABLE completion_webhooks (
    webhook_id  text PRIMARY KEY CHECK (length(webhook_id) BETWEEN 1 AND 256),
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX completion_webhooks_received ON completion_webhooks (received_at);

-- The worker role runs `survey-worker complete` (it may update invitations already); the web
-- app records completions: it may set completed_at and nothing else of an invitation.
GRANT SELECT, INSERT ON survey_refs, survey_ref_campaigns TO survey_worker, survey_web;
-- The trigger runs as whoever deletes invitations: the worker's retention purge.
GRANT DELETE ON survey_refs TO survey_worker;
GRANT UPDATE (completed_at) ON invitations TO survey_web;
GRANT SELECT, INSERT, DELETE ON completion_webhooks TO survey_web;
