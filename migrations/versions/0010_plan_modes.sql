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
--   values and the table's current size, find each lease by a lateral
--   primary-key probe (in id order, as before), and run with sequential and
--   bitmap scans off, so a table believed empty (analyzed or vacuumed while
--   empty) is not read whole either.
-- * batch_apply, which the jobs triggers call inside those functions, plans
--   as PL/pgSQL does by default whichever of them it runs under.
--
-- tests/db/test_hot_path_plans.py and tests/db/test_claim_plan.py check them.
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET enable_seqscan = off;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    SET enable_bitmapscan = off;
ALTER FUNCTION pgqueue.batch_apply(bigint, pgqueue.job_status[], pgqueue.job_status[], bigint[])
    SET plan_cache_mode = auto;

CREATE OR REPLACE FUNCTION pgqueue.heartbeat(p_worker_id text, p_ids bigint[], p_attempts integer[])
RETURNS TABLE (id bigint, attempt integer, refreshed boolean) LANGUAGE plpgsql
SET jit = off SET plan_cache_mode = force_custom_plan
SET enable_seqscan = off SET enable_bitmapscan = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH ts AS (SELECT clock_timestamp() AS now),
    leases AS (
        SELECT * FROM unnest(p_ids, p_attempts) AS l(id, attempt)
    ),
    held AS (
        -- one primary-key probe per lease, in id order, never an index on
        -- status (see complete_many)
        SELECT h.id
          FROM (SELECT l.id, l.attempt FROM leases l ORDER BY l.id) AS l
          CROSS JOIN LATERAL (
              SELECT j.id FROM pgqueue.jobs j
               WHERE j.id = l.id AND j.attempts = l.attempt
                 AND j.status::text = 'running' AND j.worker_id = p_worker_id
                 FOR NO KEY UPDATE OF j SKIP LOCKED
          ) AS h
    ),
    beat AS (
        UPDATE pgqueue.jobs j
           SET heartbeat_at = GREATEST(ts.now, j.heartbeat_at)
          FROM ts
         WHERE j.id = ANY (ARRAY(SELECT held.id FROM held)) AND j.status::text = 'running'
        RETURNING j.id, j.attempts
    )
    SELECT beat.id, beat.attempts, true FROM beat
    UNION ALL
    SELECT l.id, l.attempt, false
      FROM leases l
     CROSS JOIN LATERAL (
           -- a probe per lease (LIMIT keeps it one): still this worker's
           SELECT 1 FROM pgqueue.jobs j
            WHERE j.id = l.id AND j.attempts = l.attempt
              AND j.status::text = 'running' AND j.worker_id = p_worker_id
            LIMIT 1) AS still
     WHERE NOT EXISTS (SELECT 1 FROM beat WHERE beat.id = l.id);
END $$;

CREATE OR REPLACE FUNCTION pgqueue.complete_many(p_ids bigint[], p_attempts integer[], p_results jsonb[])
RETURNS TABLE (id bigint, attempt integer) LANGUAGE plpgsql
SET jit = off SET plan_cache_mode = force_custom_plan
SET enable_seqscan = off SET enable_bitmapscan = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH ts AS (SELECT clock_timestamp() AS now),
    input AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_results) AS i(id, attempt, result)
    ),
    held AS (
        -- One primary-key probe per lease, in id order (so concurrent calls
        -- lock rows in the same order): a lateral lookup leaves the planner no
        -- other way, whatever the statistics say. The status tests compare
        -- text, so no index on status can serve them: the statistics often
        -- show few running jobs, and the planner would then scan every running
        -- job of every worker to find these.
        SELECT h.id
          FROM (SELECT input.id, input.attempt FROM input ORDER BY input.id) AS l
          CROSS JOIN LATERAL (
              SELECT j.id FROM pgqueue.jobs j
               WHERE j.id = l.id AND j.attempts = l.attempt AND j.status::text = 'running'
                 FOR UPDATE OF j
          ) AS h
    ),
    done AS (
        UPDATE pgqueue.jobs j
           SET status = 'completed',
               result = input.result,
               progress = 100,
               started_at = COALESCE(j.started_at, GREATEST(ts.now, j.created_at)),
               completed_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
          FROM input, ts
         WHERE j.id = ANY (ARRAY(SELECT held.id FROM held)) AND input.id = j.id
           AND j.attempts = input.attempt AND j.status::text = 'running'
        RETURNING j.id, j.attempts, j.worker_id, j.leased_at, j.completed_at
    ),
    history AS (
        INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome)
        SELECT done.id, done.attempts, done.worker_id, done.leased_at, done.completed_at, 'completed'
          FROM done
    )
    SELECT done.id, done.attempts FROM done;
END $$;
