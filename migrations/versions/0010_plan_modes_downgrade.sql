-- pgqueue revision 0010, downgrade: back to revision 0009.
-- Frozen with 0010_plan_modes.sql.
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET plan_cache_mode;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET enable_seqscan;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET enable_bitmapscan;
ALTER FUNCTION pgqueue.heartbeat(text, bigint[], integer[])
    RESET plan_cache_mode;
ALTER FUNCTION pgqueue.complete_many(bigint[], integer[], jsonb[])
    RESET plan_cache_mode;
