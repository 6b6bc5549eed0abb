-- Fewer indexes on deliveries: each one is written by every publish, and most are written
-- again by every claim and every recorded attempt, all on the one writer thread.
--
-- deliveries_organization_seq (organization_id, seq) served only the unfiltered delivery list.
-- deliveries_organization_status_seq (organization_id, status, seq) serves it as well: status
-- has three values, so the newest page is the newest rows of three index ranges, merged
-- (the query takes at most one page from each). It also serves the organizations foreign key.
DROP INDEX deliveries_organization_seq;

-- deliveries_ready_due (next_attempt_at) served only "when is the next delivery due" for an
-- idle worker; one seek per endpoint into deliveries_ready (whose first entry for an
-- (organization, endpoint) pair is that pair's earliest) answers it on a reader instead.
-- A claim moved each row in it twice (lease, outcome) on top of the insert.
DROP INDEX deliveries_ready_due;
