-- Run history, version 3 (PostgreSQL).
--
-- The routing decision of a run stays one JSONB document (`runs.routing`);
-- these columns expose its parts to SQL so the migration dashboard can
-- group and count runs by flag, variant and reason, fallbacks and flag
-- evaluation errors. Stored generated columns: nothing to write; existing
-- rows are filled when the migration runs.

ALTER TABLE runs
    ADD COLUMN routing_flag TEXT GENERATED ALWAYS AS (routing ->> 'flag') STORED,
    ADD COLUMN routing_variant TEXT GENERATED ALWAYS AS (routing ->> 'variant') STORED,
    ADD COLUMN routing_reason TEXT GENERATED ALWAYS AS (routing ->> 'reason') STORED,
    ADD COLUMN routing_fallback INTEGER GENERATED ALWAYS AS (CASE WHEN routing -> 'fallback' IS NULL OR routing -> 'fallback' = 'null'::jsonb THEN 0 ELSE 1 END) STORED,
    ADD COLUMN routing_error INTEGER GENERATED ALWAYS AS (CASE WHEN routing -> 'error' IS NULL OR routing -> 'error' = 'null'::jsonb THEN 0 ELSE 1 END) STORED;

CREATE INDEX runs_by_routing_flag ON runs (routing_flag, created_at) WHERE routing_flag IS NOT NULL;
