-- Run history, version 4 (PostgreSQL).
--
-- Each engine process registers itself as an instance with a lease that it
-- renews (heartbeat). A run records the instance that executes it, so a run
-- left behind by a process that died is recognised by its instance's
-- expired lease, not by a process id: inside a container every start of
-- taskweave has the same pid, and the pid of a dead process is alive again.
-- Runs recorded before this version have no instance; they are judged by
-- their host and pid as before.

CREATE TABLE instances (
    instance_id  TEXT        NOT NULL PRIMARY KEY,
    host         TEXT        NOT NULL,
    pid          BIGINT      NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    lease_ms     BIGINT      NOT NULL
);

ALTER TABLE runs ADD COLUMN owner_instance TEXT;
