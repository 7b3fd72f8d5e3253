-- The feedback loop: what came back after a message left (bounces, complaints, deliveries),
-- one row per invitation and kind, so the same report received twice counts once. Rows
-- outlive retention's purge of invitations (no foreign key): the soft-bounce count and a
-- campaign's rates read them. They hold the keyed hash, never the address.
CREATE TABLE feedback (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invitation_id bigint NOT NULL,
    campaign_id   bigint NOT NULL,
    email_hash    bytea NOT NULL,
    kind          text NOT NULL
                  CHECK (kind IN ('hard', 'soft', 'policy', 'complaint', 'delivered')),
    -- The RFC 3463 status the report gave, e.g. 5.1.1.
    status        text CHECK (status IS NULL OR length(status) <= 32),
    source        text NOT NULL
                  CHECK (source IN ('verp', 'smtp', 'ses', 'sendgrid', 'mailgun', 'postmark')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (invitation_id, kind)
);
CREATE INDEX feedback_campaign ON feedback (campaign_id, kind);
CREATE INDEX feedback_address ON feedback (email_hash, kind, created_at);

-- Enough soft bounces in a row put an address on the bounce list too.
ALTER TABLE bounces DROP CONSTRAINT bounces_kind_check;
ALTER TABLE bounces ADD CONSTRAINT bounces_kind_check CHECK (kind IN ('hard', 'soft', 'complaint'));

-- The worker records feedback and its effects; the privacy officer may read it.
GRANT SELECT, INSERT ON feedback TO survey_worker;
GRANT SELECT ON feedback TO privacy_officer;
