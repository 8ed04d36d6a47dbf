-- Devbox lifecycle details in Runloop's terms.
ALTER TABLE devboxes ADD COLUMN transitions TEXT;
ALTER TABLE devboxes ADD COLUMN shutdown_reason TEXT;
ALTER TABLE devboxes ADD COLUMN status_message TEXT;
