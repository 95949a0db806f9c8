-- Run history, version 1 (SQLite).
-- Timestamps are RFC 3339 text in UTC with six fractional digits, so text
-- order is time order; JSON is stored as text.
-- Tasks and attempts carry no foreign key to runs on purpose: the batched
-- writer must never lose a whole batch because one event arrived for a run
-- it has not seen yet.

CREATE TABLE runs (
    run_id           TEXT    NOT NULL PRIMARY KEY,
    workflow         TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    backend          TEXT    NOT NULL,
    routing          TEXT,
    error            TEXT,
    entity_id        TEXT    NOT NULL,
    context          TEXT    NOT NULL DEFAULT 'null',
    input            TEXT    NOT NULL DEFAULT 'null',
    definition       TEXT,
    owner_host       TEXT,
    owner_pid        INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
);

CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at DESC, run_id DESC);

CREATE TABLE tasks (
    run_id      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    position    INTEGER NOT NULL DEFAULT 0,
    status      TEXT    NOT NULL,
    output      TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    skip_reason TEXT,
    started_at  TEXT,
    finished_at TEXT,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;

CREATE TABLE attempts (
    run_id      TEXT    NOT NULL,
    task        TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    error       TEXT,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    PRIMARY KEY (run_id, task, attempt)
) WITHOUT ROWID;
