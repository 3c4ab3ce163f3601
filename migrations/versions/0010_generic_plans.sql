-- pgqueue revision 0010: claim and complete_many run their statements with
-- generic plans.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- PL/pgSQL plans a statement with parameters for the values of each call
-- (a custom plan) until a generic plan looks no dearer, which for these
-- statements it never does: every claim and every completion was planned
-- again. For the claim of one job, as an idle worker makes when a NOTIFY
-- wakes it, that planning was about a third of the server's CPU. With
-- force_generic_plan each session plans them once (and again only when the
-- table's statistics or definition change). The generic plans keep to the
-- claim index and the primary key (tests/db/test_claim_plan.py,
-- tests/db/test_hot_path_plans.py).
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION pgqueue.complete_many(bigint[], integer[], jsonb[])
    SET plan_cache_mode = force_generic_plan;
