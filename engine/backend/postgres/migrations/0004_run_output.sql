-- The PostgreSQL backend's queue, version 4: the run's output.
--
-- A workflow may declare an `output:`, rendered by the worker whose event
-- ends the run succeeded, in the same transaction, from the outputs of the
-- tasks it reads. It is kept with the run and copied to the run store with
-- the rest of the run's end.

ALTER TABLE runs ADD COLUMN output JSONB;
