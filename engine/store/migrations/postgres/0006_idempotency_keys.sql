-- Run history, version 6 (PostgreSQL).
--
-- Idempotent starts: a key a caller sends with a start request names the
-- run it started, for a window. The primary key makes concurrent requests
-- with one key start one run. `fingerprint` is a hash of the request, so
-- the same key with another request is refused; `created_ms` is the Unix
-- time in milliseconds, for the window.

CREATE TABLE idempotency_keys (
    key         TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    created_ms  BIGINT  NOT NULL
);
