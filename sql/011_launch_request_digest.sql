-- `launch --idempotency-key`: what the first launch with a key asked for (SHA-256 of its
-- options and recipients file), so that a launch reusing the key for something else is
-- refused instead of answered with a campaign it did not ask for. NULL: launched without
-- a key, or before this migration (such a campaign is returned to any launch with its key).
ALTER TABLE campaigns
    ADD COLUMN request_digest bytea
        CHECK (request_digest IS NULL OR length(request_digest) = 32);
