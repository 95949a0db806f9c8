-- Run history, version 3 (SQLite).
--
-- The routing decision of a run stays one JSON document (`runs.routing`);
-- these columns expose its parts to SQL so the migration dashboard can
-- group and count runs by flag, variant and reason, fallbacks and flag
-- evaluation errors without parsing JSON row by row in the application.
-- Virtual generated columns: nothing to write, nothing to backfill.

ALTER TABLE runs ADD COLUMN routing_flag TEXT GENERATED ALWAYS AS (json_extract(routing, '$.flag')) VIRTUAL;
ALTER TABLE runs ADD COLUMN routing_variant TEXT GENERATED ALWAYS AS (json_extract(routing, '$.variant')) VIRTUAL;
ALTER TABLE runs ADD COLUMN routing_reason TEXT GENERATED ALWAYS AS (json_extract(routing, '$.reason')) VIRTUAL;
ALTER TABLE runs ADD COLUMN routing_fallback INTEGER GENERATED ALWAYS AS (CASE WHEN json_extract(routing, '$.fallback') IS NULL THEN 0 ELSE 1 END) VIRTUAL;
ALTER TABLE runs ADD COLUMN routing_error INTEGER GENERATED ALWAYS AS (CASE WHEN json_extract(routing, '$.error') IS NULL THEN 0 ELSE 1 END) VIRTUAL;
