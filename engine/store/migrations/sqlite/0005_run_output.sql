-- Run history, version 5 (SQLite).
--
-- A workflow may declare an `output:`, rendered when its run succeeds; the
-- run keeps it (JSON text). Runs recorded before, and runs that did not
-- succeed, have none.

ALTER TABLE runs ADD COLUMN output TEXT;
