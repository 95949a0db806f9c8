-- Run history, version 2 (PostgreSQL).
--
-- Definitions move out of the runs table into one row per distinct
-- definition, named by the SHA-256 of its text: a run row stays small and
-- runs of one workflow share its definition. Runs written before keep
-- theirs in runs.definition.
--
-- A run created with every task pending and named by its definition gets no
-- task rows: with implicit_pending set, a task of the definition without a
-- row is pending. Rows appear as tasks move. Runs written before keep a row
-- per task (implicit_pending FALSE).

CREATE TABLE definitions (
    id         TEXT  NOT NULL PRIMARY KEY,
    definition JSONB NOT NULL
);

ALTER TABLE runs ADD COLUMN definition_id TEXT;
ALTER TABLE runs ADD COLUMN implicit_pending BOOLEAN NOT NULL DEFAULT FALSE;
