-- Reminders follow up a survey; marketing mail has none. Launches refuse them since
-- campaigns.check_request did; a marketing campaign stored before that (or written by a
-- platform straight into the table) gets no further round, and none can be stored again.
UPDATE campaigns SET reminders = reminder_rounds_created
WHERE kind = 'marketing' AND reminders > reminder_rounds_created;

ALTER TABLE campaigns ADD CONSTRAINT campaigns_marketing_reminders
    CHECK (kind = 'survey' OR reminders = reminder_rounds_created);
