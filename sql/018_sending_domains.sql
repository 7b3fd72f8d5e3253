-- Sending domains (issue 27): whether a client's From: domain lets mailbox providers pass
-- DMARC for the relays of its route (worker/sending_domain.py owns both tables).
--   client_domains.dkim_selector  the selector of the client's DKIM key, for relays that
--                                 sign with the client's domain (`client add|update
--                                 --dkim-selector`)
--   client_domains.basis          what the last check was of (domain, selector, the
--                                 route's relays and how they authenticate, the envelope
--                                 domain): a cached result is used only for the same basis
--   client_domains.verdict, result, checked_at   the last check: `ok`, `warn` or `fail`,
--                                 what `client check --json` prints, and when (launch
--                                 reuses it for an hour; the daily re-check compares with
--                                 it and logs a change)
--   campaign_domain_overrides     campaigns launched with --allow-unaligned while their
--                                 client's verdict was `fail`: what was overridden, shown
--                                 by `status`
CREATE TABLE client_domains (
    client_id     text PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
    dkim_selector text CHECK (dkim_selector ~ '^[a-z0-9]([a-z0-9_-]{0,62})(\.[a-z0-9]([a-z0-9_-]{0,62}))*$'
                              AND length(dkim_selector) <= 200),
    basis         text,
    verdict       text CHECK (verdict IN ('ok', 'warn', 'fail')),
    result        jsonb,
    checked_at    timestamptz
);

CREATE TABLE campaign_domain_overrides (
    campaign_id bigint PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    domain      text NOT NULL,
    policy      text,
    fix         text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- survey_worker (the command line, the worker's cron, the API's launches) writes both;
-- survey_web reads them for /ops and /metrics.
GRANT SELECT, INSERT, UPDATE, DELETE ON client_domains, campaign_domain_overrides TO survey_worker;
GRANT SELECT ON client_domains, campaign_domain_overrides TO survey_web;
