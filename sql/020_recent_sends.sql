-- The accepted first messages of each recorded chunk (issue 24, a long history): /ops's
-- send-rate chart counts a campaign's acceptances of the last ten minutes per bucket of 15
-- seconds. Counted from `invitations` (the index on (campaign_id, sent_at) of first
-- messages), it visited the table for every row until autovacuum set the visibility map,
-- which on a ledger of 10 million waits for 2 million changed rows: 150 ms for a campaign
-- of 100,000 just sent. `ledger.record` adds one row here in the statement that records a
-- chunk's outcomes (`at` is that transaction's time, the rows' `sent_at`); the chart sums
-- a few hundred rows. Nothing personal: a campaign, a time, a count. The daily purge
-- deletes the rows older than a day.
CREATE TABLE recent_sends (
    campaign_id bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    sent        integer NOT NULL
);
CREATE INDEX recent_sends_campaign ON recent_sends (campaign_id, at);

-- The last ten minutes' acceptances of the campaigns that have any, so the chart is whole
-- across the upgrade (one probe of invitations_sent_first per campaign).
INSERT INTO recent_sends (campaign_id, at, sent)
SELECT i.campaign_id, i.sent_at, count(*)
FROM campaigns c
JOIN invitations i ON i.campaign_id = c.id
WHERE i.round = 0 AND i.state = 'sent' AND i.sent_at > now() - interval '10 minutes'
GROUP BY 1, 2;

GRANT SELECT, INSERT, DELETE ON recent_sends TO survey_worker;
GRANT SELECT ON recent_sends TO survey_web;
