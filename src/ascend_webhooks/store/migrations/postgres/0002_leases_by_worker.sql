-- Leases by the worker that holds them: a worker that starts asks which workers hold leases
-- (to give back those of dead processes on its own machine at once). Only leased rows are in
-- the index, so it stays as small as the work in flight.
CREATE INDEX deliveries_leased
    ON deliveries (locked_by, lease_expires_at)
    WHERE locked_by IS NOT NULL;
