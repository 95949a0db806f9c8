-- Run history, version 7 (SQLite).
--
-- A run started by `taskweave runs retry` names the run it retries.

ALTER TABLE runs ADD COLUMN retry_of TEXT;
