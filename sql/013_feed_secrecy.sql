-- The opt-out feed stays secret (issue 21). Until now opt_out_feed_page(client, ...) was
-- granted to the worker and web roles, so either login could read any client's list
-- addresses by naming the client. Now:
--   * the client API reads a feed with opt_out_feed_page_by_key(client, key, ...), which
--     returns rows only when the presented key is an active key of that client, checked
--     here, where the data is (the key's SHA-256 against api_keys, as worker/apikeys.py
--     stores it). The roles can read key hashes, so the function takes the key itself:
--     a hash read from api_keys opens nothing;
--   * feed drops (`survey-worker feed`, the daily drop_feeds cron) run as a login in the
--     new group role feed_dropper, the only role besides privacy_officer that may call
--     opt_out_feed_page(client, ...);
--   * survey_worker and survey_web lose opt_out_feed_page.
--
-- Like the roles of sql/002_roles.sql, feed_dropper belongs to the cluster: create it only
-- if it is missing and accept losing that race. Where the migrating user may not create
-- roles, an administrator creates it beforehand (CREATE ROLE feed_dropper NOLOGIN).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'feed_dropper') THEN
        BEGIN
            CREATE ROLE feed_dropper NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the role feed_dropper is missing and % may not create it',
                    current_user
                    USING HINT = 'as an administrator: CREATE ROLE feed_dropper NOLOGIN; '
                                 'then migrate again';
        END;
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION opt_out_feed_page(text, bigint, bigint, integer)
    FROM survey_worker, survey_web;

-- One page of the feed of `p_client_id` for a request presenting `p_api_key`. Raises
-- SQLSTATE 28000 (invalid_authorization_specification) unless the key is an active key of
-- that client: a missing, revoked or other client's key reads nothing.
CREATE FUNCTION opt_out_feed_page_by_key(
    p_client_id text, p_api_key text, p_after_xid bigint, p_after_id bigint, p_limit integer
) RETURNS TABLE (xid bigint, id bigint, kind text, email text, at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM api_keys k
        WHERE k.key_hash = sha256(convert_to(p_api_key, 'UTF8'))
          AND k.client_id = p_client_id
          AND k.revoked_at IS NULL
    ) THEN
        RAISE EXCEPTION 'not an active API key of this client'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;
    RETURN QUERY
        SELECT p.xid, p.id, p.kind, p.email, p.at
        FROM opt_out_feed_page(p_client_id, p_after_xid, p_after_id, p_limit) p;
END
$$;
REVOKE ALL ON FUNCTION opt_out_feed_page_by_key(text, text, bigint, bigint, integer)
    FROM PUBLIC;
-- The API's database user is a survey_web login, or a survey_worker one (API_DATABASE_URL).
GRANT EXECUTE ON FUNCTION opt_out_feed_page_by_key(text, text, bigint, bigint, integer)
    TO survey_worker, survey_web;

-- Feed drops: find the client, read its feed, keep each directory's cursor.
GRANT USAGE ON SCHEMA public TO feed_dropper;
GRANT SELECT ON schema_migrations TO feed_dropper;
GRANT SELECT (id) ON clients TO feed_dropper;
GRANT SELECT, INSERT, UPDATE, DELETE ON feed_drops TO feed_dropper;
GRANT EXECUTE ON FUNCTION opt_out_feed_page(text, bigint, bigint, integer) TO feed_dropper;
