-- The statements inside ascend_webhooks_publish and ascend_webhooks_record take whole arrays as
-- parameters, so with the default plan_cache_mode the server kept planning them afresh on every
-- call (a plan for arrays of unknown size never looked cheaper than one made for the arrays at
-- hand): about a third of a one-event publish's server CPU (measured 430-480 us per call, 280-340
-- us with generic plans). Their shapes do not depend on the sizes: each step is driven by the
-- arrays and reaches the tables through unique or partial indexes.
ALTER FUNCTION ascend_webhooks_publish(text, text[], text[], bytea[], bytea[], text[], text[], bigint)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION ascend_webhooks_record(text, text[], integer[], timestamptz[], double precision[],
                                      integer[], text[], text[], text[], timestamptz[], bigint)
    SET plan_cache_mode = force_generic_plan;
