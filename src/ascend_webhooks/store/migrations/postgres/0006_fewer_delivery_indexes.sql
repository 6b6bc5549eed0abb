-- Fewer indexes on deliveries, as SQLite's 0003: every index gets a new entry on each insert,
-- claim and recorded outcome of a delivery (neither update can be HOT: each changes an indexed
-- column), so each index costs every delivery three index writes and their WAL.
--
-- A drop takes an exclusive lock on deliveries for a moment, after the transactions in progress
-- on it: the service's are short, but behind a long query (a report) every claim, publish and
-- outcome would queue. Past 10 s the migration fails instead, and can simply run again.
SET LOCAL lock_timeout = '10s';

-- deliveries_organization_seq (organization_id, seq) served only the unfiltered delivery list,
-- which now reads the newest page of each of the three status ranges of
-- deliveries_organization_status_seq (organization_id, status, seq) and merges them. That
-- index also serves the organizations foreign key.
DROP INDEX IF EXISTS deliveries_organization_seq;

-- deliveries_status (status) served only the counts by status of /metrics, which are cached
-- for seconds and read the table (or deliveries_organization_status_seq) whole either way.
DROP INDEX IF EXISTS deliveries_status;
