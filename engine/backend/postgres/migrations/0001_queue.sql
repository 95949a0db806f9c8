-- The PostgreSQL backend's queue, version 1. Everything lives in the
-- backend's own schema (search_path), apart from the run store's tables.
--
-- A task's `state` is the queue's view of it:
--   waiting   some parent has not succeeded yet (`waiting` counts them)
--   held      ready, but the run's `concurrency` is used up
--   ready     may be claimed from `ready_at` on (a retry waits here)
--   claimed   leased by a worker until `lease_expires`
--   succeeded, failed, timed_out, cancelled, skipped: final
-- `attempt` counts the tries started; `lost` the tries whose worker went
-- away or handed them back, `crashes` the tries whose lease expired.

CREATE TABLE definitions (
    id         TEXT  NOT NULL PRIMARY KEY,
    definition JSONB NOT NULL
);

CREATE TABLE runs (
    run_id        TEXT        NOT NULL PRIMARY KEY,
    backend       TEXT        NOT NULL,
    workflow      TEXT        NOT NULL,
    version       TEXT        NOT NULL,
    definition_id TEXT        NOT NULL REFERENCES definitions (id),
    queue         TEXT        NOT NULL,
    status        TEXT        NOT NULL,
    -- Set when the run is asked to stop: 'cancelled' or 'timed_out'.
    stop          TEXT,
    error         TEXT,
    entity_id     TEXT        NOT NULL,
    context       JSONB       NOT NULL,
    input         JSONB       NOT NULL,
    routing       JSONB,
    concurrency   INT,
    timeout_ms    BIGINT,
    deadline      TIMESTAMPTZ,
    total         INT         NOT NULL,
    open          INT         NOT NULL,
    succeeded     INT         NOT NULL DEFAULT 0,
    store_synced  BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ
);

CREATE INDEX runs_deadline ON runs (deadline) WHERE finished_at IS NULL AND deadline IS NOT NULL;
CREATE INDEX runs_unsynced ON runs (finished_at) WHERE NOT store_synced AND finished_at IS NOT NULL;

CREATE TABLE tasks (
    run_id        TEXT        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    position      INT         NOT NULL,
    name          TEXT        NOT NULL,
    queue         TEXT        NOT NULL,
    state         TEXT        NOT NULL,
    waiting       INT         NOT NULL,
    children      INT[]       NOT NULL,
    reads         INT[]       NOT NULL,
    ready_at      TIMESTAMPTZ,
    attempt       INT         NOT NULL DEFAULT 0,
    lost          INT         NOT NULL DEFAULT 0,
    crashes       INT         NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_expires TIMESTAMPTZ,
    output        JSONB,
    error         TEXT,
    skip_reason   TEXT,
    started_at    TIMESTAMPTZ,
    attempt_started_at TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    PRIMARY KEY (run_id, position)
);

CREATE INDEX tasks_ready ON tasks (queue, ready_at) WHERE state = 'ready';
CREATE INDEX tasks_leased ON tasks (lease_expires) WHERE state = 'claimed';

CREATE TABLE attempts (
    run_id      TEXT        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    position    INT         NOT NULL,
    attempt     INT         NOT NULL,
    status      TEXT        NOT NULL,
    error       TEXT,
    worker      TEXT,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, position, attempt)
);
