-- A client's route (issue 23): the relays its messages may leave through, by their names in
-- SMTP_RELAYS (lower-case letters, digits, '_'); NULL means every configured relay. Set by
-- `client add --relays` and `client update --relays | --all-relays`; whether each name is
-- configured is checked by the command, since relays are configuration, not data.
ALTER TABLE clients ADD COLUMN relays text[]
    CONSTRAINT clients_relays CHECK (
        relays IS NULL
        OR (cardinality(relays) BETWEEN 1 AND 100
            AND array_ndims(relays) = 1
            AND array_position(relays, NULL) IS NULL
            AND array_to_string(relays, ',') ~ '^[a-z0-9_]+(,[a-z0-9_]+)*$')
    );

-- The roles read and write clients by table-wide grants (sql/002_roles.sql), which cover
-- the new column: survey_worker and survey_web read it with the rest of the row, and only
-- survey_worker (the command line) writes it. feed_dropper reads only clients.id
-- (sql/013_feed_secrecy.sql) and needs nothing more.
