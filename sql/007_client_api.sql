-- Clients as users (issue 14): API keys, the per-client opt-out feed, scheduled feed drops,
-- and what an access request reads by address.

-- A client's API keys. Only the SHA-256 of a key is stored: a key is 32 random bytes, so a
-- fast hash is as good as a slow one, and a database dump gives nobody a usable key.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id    text NOT NULL REFERENCES clients (id),
    name         text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_client ON api_keys (client_id);

-- The opt-out feed: one row per opt-out, resubscription and erasure on a client's list,
-- written by triggers, so no writer (web app, worker, CLI, complaints) can bypass it.
--
-- Ordering without skipping: identity ids are allocated before commit, so a reader paging
-- by `id > cursor` would skip a row whose transaction commits after a later id was read.
-- Each row records the id of the transaction that wrote it (`xid`, pg_current_xact_id(),
-- 64 bits, never wraps), and a reader only returns rows whose xid is below its snapshot's
-- xmin: every transaction below xmin has ended, so no row can later appear below the
-- cursor. Pages are ordered by (xid, id). A long-running writing transaction holds the
-- feed back (never loses a row).
CREATE TABLE opt_out_feed (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid        bigint NOT NULL,
    client_id  text NOT NULL REFERENCES clients (id),
    kind       text NOT NULL CHECK (kind IN ('opt_out', 'resubscribe', 'erase')),
    email_hash bytea NOT NULL,
    email      text,
    at         timestamptz NOT NULL
);
CREATE INDEX opt_out_feed_page ON opt_out_feed (client_id, xid, id);
CREATE INDEX opt_out_feed_address ON opt_out_feed (email_hash);

CREATE FUNCTION opt_out_feed_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO opt_out_feed (xid, client_id, kind, email_hash, email, at)
        VALUES (pg_current_xact_id()::text::bigint, NEW.client_id, 'opt_out', NEW.email_hash,
                NEW.email, NEW.created_at);
        RETURN NEW;
    END IF;
    INSERT INTO opt_out_feed (xid, client_id, kind, email_hash, email, at)
    VALUES (pg_current_xact_id()::text::bigint, OLD.client_id, 'resubscribe', OLD.email_hash,
            OLD.email, now());
    RETURN OLD;
END
$$;
CREATE TRIGGER client_opt_outs_feed AFTER INSERT OR DELETE ON client_opt_outs
    FOR EACH ROW EXECUTE FUNCTION opt_out_feed_record();

-- An erasure (the audit row `erase` is written by `survey-worker erase`) becomes one
-- `erase` event in the feed of every client whose list held the address; its earlier
-- events leave the feed, so an erased address appears as its erasure only.
CREATE FUNCTION opt_out_feed_erase() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO opt_out_feed (xid, client_id, kind, email_hash, email, at)
    SELECT pg_current_xact_id()::text::bigint, c.client_id, 'erase', NEW.email_hash, NULL, now()
    FROM (SELECT client_id FROM opt_out_feed WHERE email_hash = NEW.email_hash
          UNION SELECT client_id FROM client_opt_outs WHERE email_hash = NEW.email_hash) c
    ORDER BY c.client_id;
    DELETE FROM opt_out_feed WHERE email_hash = NEW.email_hash AND kind <> 'erase';
    RETURN NEW;
END
$$;

-- The audit trail also records access requests (`survey-worker access-request`).
ALTER TABLE opt_out_audit DROP CONSTRAINT opt_out_audit_action_check;
ALTER TABLE opt_out_audit ADD CONSTRAINT opt_out_audit_action_check
    CHECK (action IN ('opt_out', 'resubscribe', 'erase', 'access'));

CREATE TRIGGER opt_out_audit_feed AFTER INSERT ON opt_out_audit
    FOR EACH ROW WHEN (NEW.action = 'erase') EXECUTE FUNCTION opt_out_feed_erase();

-- The feed starts from the list's beginning: today's entries, oldest first.
INSERT INTO opt_out_feed (xid, client_id, kind, email_hash, email, at)
SELECT pg_current_xact_id()::text::bigint, client_id, 'opt_out', email_hash, email, created_at
FROM client_opt_outs ORDER BY created_at, client_id, email_hash;

-- One page of a client's feed after the cursor (after_xid, after_id), as described above.
-- The only way the worker and web roles read the feed's addresses: one client at a time,
-- in order (they get no SELECT on the table).
CREATE FUNCTION opt_out_feed_page(
    p_client_id text, p_after_xid bigint, p_after_id bigint, p_limit integer
) RETURNS TABLE (xid bigint, id bigint, kind text, email text, at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT f.xid, f.id, f.kind, f.email, f.at
    FROM opt_out_feed f
    WHERE f.client_id = p_client_id
      AND (f.xid, f.id) > (p_after_xid, p_after_id)
      AND f.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    ORDER BY f.xid, f.id
    LIMIT p_limit
$$;

-- Scheduled drops of the feed (`survey-worker feed CLIENT_ID --output DIR [--daily]`):
-- where each client's drops go and the cursor of the last one per directory.
CREATE TABLE feed_drops (
    client_id    text NOT NULL REFERENCES clients (id),
    directory    text NOT NULL CHECK (directory LIKE '/%'),
    daily        boolean NOT NULL DEFAULT false,
    cursor       text NOT NULL DEFAULT '',
    last_drop_at timestamptz,
    PRIMARY KEY (client_id, directory)
);

-- What an access request looks up by address (`survey-worker access-request`): indexes,
-- not scans (invitations, feedback and the lists keyed by address have theirs already).
CREATE INDEX client_opt_outs_address ON client_opt_outs (email_hash);
CREATE INDEX opt_out_audit_address ON opt_out_audit (email_hash);

-- Grants, in sql/002_roles.sql's style. Functions are executable by PUBLIC unless revoked.
REVOKE ALL ON FUNCTION opt_out_feed_record(), opt_out_feed_erase() FROM PUBLIC;
REVOKE ALL ON FUNCTION opt_out_feed_page(text, bigint, bigint, integer) FROM PUBLIC;

-- The worker role: `client key create|list|revoke`, the API's campaigns (API_DATABASE_URL),
-- `feed` and its daily cron.
GRANT SELECT, INSERT, UPDATE ON api_keys TO survey_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON feed_drops TO survey_worker;
GRANT EXECUTE ON FUNCTION opt_out_feed_page(text, bigint, bigint, integer) TO survey_worker;

-- The web role, when it serves /v1 itself: authenticate keys, read the feed.
GRANT SELECT (id, client_id, key_hash, last_used_at, revoked_at) ON api_keys TO survey_web;
GRANT UPDATE (last_used_at) ON api_keys TO survey_web;
GRANT EXECUTE ON FUNCTION opt_out_feed_page(text, bigint, bigint, integer) TO survey_web;

-- The privacy contact: access requests read everything held about an address.
GRANT SELECT ON opt_out_feed TO privacy_officer;
GRANT EXECUTE ON FUNCTION opt_out_feed_page(text, bigint, bigint, integer) TO privacy_officer;
