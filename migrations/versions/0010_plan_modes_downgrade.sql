-- pgqueue revision 0010, downgrade: back to revision 0009.
-- Frozen with 0010_plan_modes.sql.
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET plan_cache_mode;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET enable_seqscan;
ALTER FUNCTION pgqueue.claim(text, text[], integer, interval, text[])
    RESET enable_bitmapscan;
ALTER FUNCTION pgqueue.batch_apply(bigint, pgqueue.job_status[], pgqueue.job_status[], bigint[])
    RESET plan_cache_mode;

CREATE OR REPLACE FUNCTION pgqueue.heartbeat(p_worker_id text, p_ids bigint[], p_attempts integer[])
RETURNS TABLE (id bigint, attempt integer, refreshed boolean) LANGUAGE plpgsql SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH ts AS (SELECT clock_timestamp() AS now),
    leases AS (
        SELECT * FROM unnest(p_ids, p_attempts) AS l(id, attempt)
    ),
    held AS (
        -- by primary key, never by an index on status (see complete_many)
        SELECT j.id
          FROM pgqueue.jobs j
          JOIN leases l ON j.id = l.id AND j.attempts = l.attempt
         WHERE j.status::text = 'running' AND j.worker_id = p_worker_id
         ORDER BY j.id
           FOR NO KEY UPDATE OF j SKIP LOCKED
    ),
    beat AS (
        UPDATE pgqueue.jobs j
           SET heartbeat_at = GREATEST(ts.now, j.heartbeat_at)
          FROM held, ts
         WHERE j.id = held.id AND j.status::text = 'running'
        RETURNING j.id, j.attempts
    )
    SELECT beat.id, beat.attempts, true FROM beat
    UNION ALL
    SELECT l.id, l.attempt, false
      FROM leases l
     WHERE NOT EXISTS (SELECT 1 FROM beat WHERE beat.id = l.id)
       AND EXISTS (SELECT 1 FROM pgqueue.jobs j
                    WHERE j.id = l.id AND j.attempts = l.attempt
                      AND j.status::text = 'running' AND j.worker_id = p_worker_id);
END $$;

CREATE OR REPLACE FUNCTION pgqueue.complete_many(p_ids bigint[], p_attempts integer[], p_results jsonb[])
RETURNS TABLE (id bigint, attempt integer) LANGUAGE plpgsql SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH ts AS (SELECT clock_timestamp() AS now),
    input AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_results) AS i(id, attempt, result)
    ),
    held AS (
        -- Rows are found by primary key. The status tests compare text, so no
        -- index on status can serve them: the statistics often show few
        -- running jobs, and the planner would then scan every running job of
        -- every worker to find these (100 ms per call at 20,000 running).
        SELECT j.id
          FROM pgqueue.jobs j
          JOIN input ON j.id = input.id AND j.attempts = input.attempt
         WHERE j.status::text = 'running'
         ORDER BY j.id
           FOR UPDATE OF j
    ),
    done AS (
        UPDATE pgqueue.jobs j
           SET status = 'completed',
               result = input.result,
               progress = 100,
               started_at = COALESCE(j.started_at, GREATEST(ts.now, j.created_at)),
               completed_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
          FROM input, held, ts
         WHERE j.id = held.id AND input.id = j.id
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
