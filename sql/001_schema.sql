-- The ledger and the suppression lists. Every address is identified by email_hash, the
-- HMAC-SHA256 of its normalised form under ADDRESS_HASH_KEY; the clear address is kept
-- only where it is needed to send or to export, and is set to NULL on erasure.

CREATE TABLE clients (
    id           text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- A small number that identifies the client inside unsubscribe tokens.
    token_id     integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    sender_email text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id    text NOT NULL REFERENCES clients (id),
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('survey', 'marketing')),
    template     text NOT NULL,
    locale       text NOT NULL DEFAULT 'en',
    survey_url   text NOT NULL,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'paused', 'cancelled', 'completed', 'failed')),
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
CREATE INDEX campaigns_client ON campaigns (client_id);
CREATE INDEX campaigns_status ON campaigns (status);

CREATE TABLE invitations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id     bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    email           text,
    email_hash      bytea NOT NULL,
    locale          text,
    vars            jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'suppressed', 'deferred',
                                     'failed', 'unknown', 'cancelled')),
    reason          text,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- A claim: the worker that holds it until lease_until. A pending row whose lease ran
    -- out is free again; a sending row whose lease ran out is unknown.
    lease_until     timestamptz,
    claimed_by      text,
    smtp_code       integer,
    message_id      text,
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, email_hash)
);
CREATE INDEX invitations_open ON invitations (campaign_id, id)
    WHERE state IN ('pending', 'sending', 'deferred');
CREATE INDEX invitations_hash ON invitations (email_hash);

CREATE TABLE client_opt_outs (
    client_id  text NOT NULL REFERENCES clients (id),
    email_hash bytea NOT NULL,
    email      text,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, email_hash)
);

CREATE TABLE marketing_opt_outs (
    email_hash bytea PRIMARY KEY,
    email      text,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Global: a hard bounce or a complaint suppresses every future send to the address.
CREATE TABLE bounces (
    email_hash bytea PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('hard', 'complaint')),
    smtp_code  integer,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every opt-out, reversal and erasure, with who did it and why. Holds no clear address.
CREATE TABLE opt_out_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action     text NOT NULL CHECK (action IN ('opt_out', 'resubscribe', 'erase')),
    scope      text NOT NULL,
    email_hash bytea NOT NULL,
    actor      text NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
