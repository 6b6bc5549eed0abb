-- Databases created before b69b91a: that commit removed deliveries_ready_due (next_attempt_at)
-- from 0001 itself rather than in a migration, so they still have it. On a table not yet
-- analyzed the planner prefers it for the claim and reads the whole backlog through it;
-- next_due_at walks deliveries_ready instead. Databases created since never had it.
--
-- A drop waits for the transactions in progress on deliveries and holds every new one meanwhile
-- (see 0006): past 10 s the migration fails instead, and can simply run again.
SET LOCAL lock_timeout = '10s';

DROP INDEX IF EXISTS deliveries_ready_due;
