-- Group roles for role-based access (DESIGN.md section 1: "separate database roles for the
-- worker, the web endpoint and the privacy officer"). They cannot log in: operators create
-- login users and make them members, e.g.
--     CREATE ROLE app_worker LOGIN PASSWORD '...' IN ROLE survey_worker;
-- Only privacy_officer may remove an opt-out or change one (DELETE / UPDATE on the opt-out
-- lists); the worker and the web app may only read and add. Nobody but the owner may
-- change or delete the audit trail.
--
-- Roles belong to the whole cluster, not to one database, so another database of the same
-- cluster (another environment, a test database) may have created them already, possibly
-- at the same moment: create each one only if it is missing, and accept losing that race.
-- Where the migrating user may not create roles, create these three beforehand.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['survey_worker', 'survey_web', 'privacy_officer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO survey_worker, survey_web, privacy_officer;
GRANT SELECT ON schema_migrations TO survey_worker, survey_web, privacy_officer;

-- The worker and the campaign platform (CLI `client add`, `launch`, the jobs, retention).
GRANT SELECT, INSERT, UPDATE ON clients, campaigns, bounces TO survey_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON invitations TO survey_worker;
GRANT SELECT, INSERT ON client_opt_outs, marketing_opt_outs TO survey_worker;
GRANT INSERT ON opt_out_audit TO survey_worker;

-- The unsubscribe web app: find the client and the clear address a token refers to, add
-- the opt-out.
GRANT SELECT ON clients, campaigns, invitations TO survey_web;
GRANT SELECT, INSERT ON client_opt_outs, marketing_opt_outs TO survey_web;
GRANT INSERT ON opt_out_audit TO survey_web;

-- The privacy contact: reversal, export, erasure (which blanks invitations' addresses).
GRANT SELECT ON clients, campaigns, bounces TO privacy_officer;
GRANT SELECT, UPDATE ON invitations TO privacy_officer;
GRANT SELECT, INSERT, UPDATE, DELETE ON client_opt_outs, marketing_opt_outs TO privacy_officer;
GRANT SELECT, INSERT ON opt_out_audit TO privacy_officer;
