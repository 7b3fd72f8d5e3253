-- CONTACT_CAP counted in one row per address (keyed hash): the invitations counted and
-- when, oldest first. Counting a chunk is one upsert per address, which finds, counts and
-- records in one probe of the primary key, and whose row lock is all that concurrent counts
-- of one address need; `contacts` (a row per invitation) took a second index and one lock
-- over every count of every chunk.
CREATE TABLE contact_counts (
    email_hash     bytea PRIMARY KEY,
    invitation_ids bigint[] NOT NULL,
    counted_at     timestamptz[] NOT NULL,
    CHECK (cardinality(invitation_ids) = cardinality(counted_at))
);
INSERT INTO contact_counts (email_hash, invitation_ids, counted_at)
SELECT email_hash,
       array_agg(invitation_id ORDER BY counted_at, invitation_id),
       array_agg(counted_at ORDER BY counted_at, invitation_id)
FROM contacts
GROUP BY email_hash;
DROP TABLE contacts;

GRANT SELECT, INSERT, UPDATE, DELETE ON contact_counts TO survey_worker;
GRANT SELECT ON contact_counts TO privacy_officer;
