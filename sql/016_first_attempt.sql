-- Retries are measured in time (RETRY_HORIZON from the first attempt), not in attempts:
-- when an invitation's first attempt reached a relay. Relay trouble never sets it.
ALTER TABLE invitations ADD COLUMN IF NOT EXISTS first_attempt_at timestamptz;
