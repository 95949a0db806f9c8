-- Run history, version 5 (PostgreSQL).
--
-- A workflow may declare an `output:`, rendered when its run succeeds; the
-- run keeps it. Runs recorded before, and runs that did not succeed, have
-- none.

ALTER TABLE runs ADD COLUMN output JSONB;
