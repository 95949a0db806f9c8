-- Queue schema v5: a run started by `taskweave runs retry` names the run it
-- retries; the tasks it reuses are inserted succeeded, with their outputs.

ALTER TABLE runs ADD COLUMN retry_of TEXT;
