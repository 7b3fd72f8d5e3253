-- The field period (issue 25): when a campaign may send, in whose time zone, how many a day,
-- and when it closes.
--   clients.timezone      the client's time zone (IANA name): a recipient's when the file
--                         gives none, the calendar day of --per-day, and the zone of a
--                         --start-at or --close-at written without an offset
--   invitations.timezone  the recipient's own (the file's `timezone` column); NULL: the
--                         client's, read at send time
--   campaigns.start_at    before it the campaign is `scheduled` and sends nothing
--   campaigns.close_at    from it nothing is sent; what was not sent ends `expired`
--   campaigns.send_window the window spec (worker/schedule.py), in each recipient's zone
--   campaigns.per_day     at most this many messages a day in the client's zone
--   campaigns.waiting_until  when a slice that waits for the window or the day's quota
--                         runs again: reconcile does not re-drive the campaign before it,
--                         and `status` shows it as the next send
-- The zone names are checked by the commands and the API (zoneinfo), not here.
ALTER TABLE clients ADD COLUMN timezone text NOT NULL DEFAULT 'UTC'
    CONSTRAINT clients_timezone CHECK (length(timezone) BETWEEN 1 AND 64);

ALTER TABLE invitations ADD COLUMN timezone text
    CONSTRAINT invitations_timezone CHECK (length(timezone) BETWEEN 1 AND 64);

ALTER TABLE campaigns
    ADD COLUMN start_at timestamptz,
    ADD COLUMN close_at timestamptz,
    ADD COLUMN send_window text CHECK (length(send_window) BETWEEN 1 AND 1000),
    ADD COLUMN per_day integer CHECK (per_day > 0),
    ADD COLUMN waiting_until timestamptz,
    ADD CONSTRAINT campaigns_field_period CHECK (close_at > start_at);

ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('scheduled', 'running', 'paused', 'cancelled', 'completed', 'failed'));
ALTER TABLE invitations DROP CONSTRAINT invitations_state_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_state_check
    CHECK (state IN ('pending', 'sending', 'sent', 'suppressed', 'deferred', 'failed',
                     'unknown', 'cancelled', 'expired'));

-- --per-day: the messages of each campaign started on each day of the client's calendar,
-- counted in the transaction that marks them `sending` (the day's row lock serialises
-- the claims of a paced campaign).
CREATE TABLE campaign_days (
    campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    day         date NOT NULL,
    sent        integer NOT NULL DEFAULT 0 CHECK (sent >= 0),
    PRIMARY KEY (campaign_id, day)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON campaign_days TO survey_worker;
GRANT SELECT ON campaign_days TO survey_web;
