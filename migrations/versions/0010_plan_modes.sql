-- pgqueue revision 0010: how the hot functions plan their statements.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- PL/pgSQL plans a statement with parameters for each call's values (a
-- custom plan) and, after five calls, switches to one generic plan for the
-- session if that looks no dearer. Two things went wrong with that:
--
-- * claim was planned again on every call (its generic plan always looked
--   dearer): about a third of the server's CPU for the claim of one job, as
--   an idle worker makes when a NOTIFY wakes it. It now uses a generic plan
--   from its first call, with sequential and bitmap scans off, so the plan
--   keeps to the claim index and the primary key even when it was made while
--   the table was empty.
-- * When the table was empty, or analyzed while empty, the generic plan did
--   look cheapest, and the session kept that plan: after a burst of jobs,
--   every claim, completion and heartbeat read the whole table (0.3-0.5 s per
--   claim and 1.4 s per completion of 100 jobs at 200,000 jobs) until the
--   next ANALYZE. complete_many and heartbeat now plan every call for its
--   values and the table's current size, as they did whenever it worked.
--
-- tests/db/test_hot_path_plans.py and tests/db/test_claim_plan.py check both.
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET enable_seqscan = off;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET enable_bitmapscan = off;
ALTER FUNCTION pgqueue.heartbeat(text, bigint[], integer[])
    SET plan_cache_mode = force_custom_plan;
ALTER FUNCTION pgqueue.complete_many(bigint[], integer[], jsonb[])
    SET plan_cache_mode = force_custom_plan;
