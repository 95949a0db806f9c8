-- The PostgreSQL backend's queue, version 3: the scheduler core decides.
--
-- Each run keeps the scheduler core's state in `sched` (every task's
-- status and attempt, the run's stop; see `run::sched::Core::snapshot`),
-- read and written under the run row's lock with every event: what is
-- ready, skipped or final is decided by the core, not counted in SQL. A
-- run submitted before version 3 has no `sched`: its state is rebuilt
-- from its tasks' rows at its next event.
--
-- Task states from now on: waiting (pending), ready, claimed, and the
-- final ones; `held` appears only in runs submitted before.

ALTER TABLE runs ADD COLUMN sched BYTEA;
ALTER TABLE runs DROP COLUMN total, DROP COLUMN open, DROP COLUMN succeeded;
ALTER TABLE tasks DROP COLUMN waiting, DROP COLUMN children;
