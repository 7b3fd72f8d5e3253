-- `launch --idempotency-key KEY`: a client that launches again with the same key (a retry
-- after a timeout, a platform re-sending its request) gets the campaign the first launch
-- created. The unique constraint makes two concurrent launches with one key create one
-- campaign; launches without a key (NULL) never conflict.
ALTER TABLE campaigns
    ADD COLUMN idempotency_key text
        CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 200),
    ADD CONSTRAINT campaigns_client_idempotency_key UNIQUE (client_id, idempotency_key);
