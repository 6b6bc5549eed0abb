-- Databases created before cf5c04f: that commit removed deliveries_status (status) from 0001
-- itself rather than in a migration, so their files still have it (and recorded the earlier
-- checksum of 0001, which _migrate.py accepts). It served only the /metrics counts by status,
-- which read the table whole either way; every delivery wrote it on insert, claim and outcome.
-- Databases created since never had it.
DROP INDEX IF EXISTS deliveries_status;
