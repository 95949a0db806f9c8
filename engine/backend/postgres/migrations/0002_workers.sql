-- The PostgreSQL backend's queue, version 2: the live workers.
--
-- Each `taskweave worker` keeps its row up to date with every heartbeat
-- (a quarter of the lease) and deletes it when it stops cleanly. A row
-- whose heartbeat is older than the lease is a worker that went away; the
-- next worker to start deletes rows older than ten leases.

CREATE TABLE workers (
    id             TEXT        NOT NULL PRIMARY KEY,
    host           TEXT        NOT NULL,
    pid            INT         NOT NULL,
    queues         TEXT[]      NOT NULL,
    concurrency    INT         NOT NULL,
    running        INT         NOT NULL DEFAULT 0,
    started_at     TIMESTAMPTZ NOT NULL,
    last_heartbeat TIMESTAMPTZ NOT NULL
);

CREATE INDEX workers_heartbeat ON workers (last_heartbeat);
