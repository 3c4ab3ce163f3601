-- pgqueue revision 0010, downgrade: back to revision 0009.
-- Frozen with 0010_generic_plans.sql.
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET plan_cache_mode;
ALTER FUNCTION pgqueue.complete_many(bigint[], integer[], jsonb[])
    RESET plan_cache_mode;
