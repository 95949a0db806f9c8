-- Run history, version 1 (PostgreSQL).
-- Tasks and attempts carry no foreign key to runs on purpose: the batched
-- writer must never lose a whole batch because one event arrived for a run
-- it has not seen yet.

CREATE TABLE runs (
    run_id           TEXT        NOT NULL PRIMARY KEY,
    workflow         TEXT        NOT NULL,
    version          TEXT        NOT NULL,
    status           TEXT        NOT NULL,
    backend          TEXT        NOT NULL,
    routing          JSONB,
    error            TEXT,
    entity_id        TEXT        NOT NULL,
    context          JSONB       NOT NULL DEFAULT 'null',
    input            JSONB       NOT NULL DEFAULT 'null',
    definition       JSONB,
    owner_host       TEXT,
    owner_pid        BIGINT,
    cancel_requested BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);

CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at DESC, run_id DESC);

CREATE TABLE tasks (
    run_id      TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    position    BIGINT      NOT NULL DEFAULT 0,
    status      TEXT        NOT NULL,
    output      JSONB,
    attempts    BIGINT      NOT NULL DEFAULT 0,
    error       TEXT,
    skip_reason TEXT,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE attempts (
    run_id      TEXT        NOT NULL,
    task        TEXT        NOT NULL,
    attempt     BIGINT      NOT NULL,
    status      TEXT        NOT NULL,
    error       TEXT,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, task, attempt)
);
