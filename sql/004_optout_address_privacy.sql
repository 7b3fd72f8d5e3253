-- The clear addresses on the opt-out lists are for the privacy officer alone (the client's
-- export). The worker's send-time check and retention, and the web app's opt-out, need
-- only the keyed hash: they may still add an entry with its address (INSERT), but no
-- longer read the address back. A column cannot be taken out of a table-wide grant, so
-- the table's SELECT goes and SELECT on every other column comes instead.
REVOKE SELECT ON client_opt_outs, marketing_opt_outs FROM survey_worker, survey_web;
GRANT SELECT (client_id, email_hash, source, created_at) ON client_opt_outs
    TO survey_worker, survey_web;
GRANT SELECT (email_hash, source, created_at) ON marketing_opt_outs
    TO survey_worker, survey_web;
