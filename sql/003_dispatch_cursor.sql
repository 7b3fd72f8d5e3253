-- Slices in flight: a campaign's slices are enqueued a window at a time, not all at once,
-- so Redis holds a bounded number of jobs per campaign however many recipients it has.
-- dispatched_through is the last invitation id covered by a slice already enqueued;
-- `launch_campaign` starts it again from 0 (a re-drive after Redis lost jobs), and each
-- finished slice moves it on by one slice.
ALTER TABLE campaigns ADD COLUMN dispatched_through bigint NOT NULL DEFAULT 0;
