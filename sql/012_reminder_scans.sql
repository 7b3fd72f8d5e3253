-- A reminder round that is due but not complete (first messages still open, or accepted
-- too recently): up to which acceptance time (`sent_at`) of the first messages its rows
-- were made. Each reconcile pass then looks only at the first messages accepted since,
-- instead of the whole campaign; the pass that completes the round looks at all of them
-- once more (so a first message whose acceptance committed late is not missed), and the
-- row goes.
CREATE TABLE reminder_scans (
    campaign_id   bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    round         integer NOT NULL,
    scanned_until timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, round)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON reminder_scans TO survey_worker;
