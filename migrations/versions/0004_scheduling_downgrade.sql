-- pgqueue revision 0004, downgrade: back to revision 0003's functions.
-- Frozen with 0004_scheduling.sql. Unique jobs lose their keys (the jobs
-- stay); periodic ticks go.

DROP FUNCTION pgqueue.enqueue_tick(text, timestamptz, text, jsonb, text, integer, integer, interval,
                                   boolean);
DROP FUNCTION pgqueue.enqueue(text, jsonb, text, integer, timestamptz, integer, interval, text, jsonb,
                              text, text, interval);
DROP FUNCTION pgqueue.enqueue_many(text[], jsonb[], text[], integer[], timestamptz[], integer[],
                                   interval[], text[], jsonb[], bigint, text[], text[], interval[]);
DROP FUNCTION pgqueue.prune(interval, interval, integer, interval);
DROP TABLE pgqueue.periodic_ticks;
DROP INDEX pgqueue.jobs_dedupe_created_idx;
DROP INDEX pgqueue.jobs_dedupe_held_idx;
ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_dedupe_valid;
ALTER TABLE pgqueue.jobs DROP COLUMN dedupe_scope;
ALTER TABLE pgqueue.jobs DROP COLUMN dedupe_key;

-- enqueue: insert one pending job; returns its id. Visible iff the caller's
-- transaction commits.
CREATE OR REPLACE FUNCTION pgqueue.enqueue(
    p_task         text,
    p_args         jsonb DEFAULT '{}',
    p_queue        text DEFAULT 'default',
    p_priority     integer DEFAULT 0,
    p_run_at       timestamptz DEFAULT NULL,
    p_max_attempts integer DEFAULT 1,
    p_timeout      interval DEFAULT NULL,
    p_owner        text DEFAULT NULL,
    p_metadata     jsonb DEFAULT '{}'
) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner, metadata)
    VALUES (p_task, COALESCE(p_args, '{}'), COALESCE(p_queue, 'default'), COALESCE(p_priority, 0),
            COALESCE(p_run_at, now()), COALESCE(p_max_attempts, 1), p_timeout, p_owner,
            COALESCE(p_metadata, '{}'))
    RETURNING id
$$;

-- enqueue_many: insert many jobs in one statement, all or nothing. The arrays
-- are parallel (item i of each describes job i); ids come back in item order.
-- An invalid item raises 22023 naming its index (0-based) and the problem.
-- With p_batch_id the jobs are children of that batch (see enqueue_batch).
CREATE OR REPLACE FUNCTION pgqueue.enqueue_many(
    p_tasks        text[],
    p_args         jsonb[],
    p_queues       text[],
    p_priorities   integer[],
    p_run_ats      timestamptz[],
    p_max_attempts integer[],
    p_timeouts     interval[],
    p_owners       text[],
    p_metadata     jsonb[],
    p_batch_id     bigint DEFAULT NULL
) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := cardinality(p_tasks);
    v_bad record;
BEGIN
    IF v_n IS NULL THEN
        RAISE EXCEPTION 'pgqueue: enqueue_many: tasks must not be null' USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_args) <> v_n OR cardinality(p_queues) <> v_n OR cardinality(p_priorities) <> v_n
       OR cardinality(p_run_ats) <> v_n OR cardinality(p_max_attempts) <> v_n
       OR cardinality(p_timeouts) <> v_n OR cardinality(p_owners) <> v_n
       OR cardinality(p_metadata) <> v_n THEN
        RAISE EXCEPTION 'pgqueue: enqueue_many: all argument arrays must have % items', v_n
            USING ERRCODE = '22023';
    END IF;

    SELECT ord - 1 AS idx,
           CASE
               WHEN t IS NULL OR t = '' OR length(t) > 256 THEN 'task must be 1 to 256 characters'
               WHEN a IS NULL OR jsonb_typeof(a) <> 'object' THEN 'args must be a JSON object'
               WHEN q IS NULL OR q = '' OR length(q) > 128 THEN 'queue must be 1 to 128 characters'
               WHEN m IS NULL OR m < 1 THEN 'max_attempts must be at least 1'
               WHEN tm <= interval '0' THEN 'timeout must be positive'
               WHEN md IS NULL OR jsonb_typeof(md) <> 'object' THEN 'metadata must be a JSON object'
           END AS problem
      INTO v_bad
      FROM unnest(p_tasks, p_args, p_queues, p_max_attempts, p_timeouts, p_metadata)
           WITH ORDINALITY AS u(t, a, q, m, tm, md, ord)
     WHERE t IS NULL OR t = '' OR length(t) > 256
        OR a IS NULL OR jsonb_typeof(a) <> 'object'
        OR q IS NULL OR q = '' OR length(q) > 128
        OR m IS NULL OR m < 1
        OR tm <= interval '0'
        OR md IS NULL OR jsonb_typeof(md) <> 'object'
     ORDER BY ord
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgqueue: enqueue_many: item %: %; nothing was enqueued', v_bad.idx, v_bad.problem
            USING ERRCODE = '22023';
    END IF;

    RETURN QUERY
    INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner,
                              metadata, batch_id)
    SELECT t, a, q, COALESCE(p, 0), COALESCE(r, now()), m, tm, o, md, p_batch_id
      FROM unnest(p_tasks, p_args, p_queues, p_priorities, p_run_ats, p_max_attempts,
                  p_timeouts, p_owners, p_metadata)
           WITH ORDINALITY AS u(t, a, q, p, r, m, tm, o, md, ord)
     ORDER BY ord
    RETURNING id;
END $$;

-- replay: operator re-run of a job that ended without success. It becomes
-- pending again with at least p_extra_attempts more attempts (never fewer than
-- it had left); its attempt history and last error are kept, and attempt
-- numbers keep counting (old leases stay stale). A child of a batch that has
-- reached its final state cannot be replayed: the batch finished exactly once.
CREATE OR REPLACE FUNCTION pgqueue.replay(p_id bigint, p_extra_attempts integer DEFAULT 1)
RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_batch pgqueue.batches%ROWTYPE;
BEGIN
    IF p_extra_attempts IS NULL OR p_extra_attempts < 1 THEN
        RAISE EXCEPTION 'pgqueue: replay: extra attempts must be at least 1' USING ERRCODE = '22023';
    END IF;
    -- Lock the batch before the child, so a concurrent cancel_batch (which
    -- locks active children, then the batch) cannot miss this child.
    SELECT b.* INTO v_batch
      FROM pgqueue.batches b JOIN pgqueue.jobs j ON j.batch_id = b.id
     WHERE j.id = p_id
       FOR NO KEY UPDATE OF b;
    IF v_batch.completed_at IS NOT NULL THEN
        RAISE EXCEPTION 'pgqueue: cannot replay job %: its batch % is % (a finished batch stays finished)',
            p_id, v_batch.id, v_batch.status USING ERRCODE = 'PQ002';
    END IF;
    UPDATE pgqueue.jobs
       SET status = 'pending',
           paused = COALESCE(v_batch.paused, false),
           run_at = clock_timestamp(),
           completed_at = NULL,
           result = NULL,
           progress = 0,
           progress_message = NULL,
           max_attempts = GREATEST(max_attempts, attempts + p_extra_attempts)
     WHERE id = p_id AND status IN ('failed', 'timeout', 'zombie', 'dead_letter', 'cancelled');
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_state_error(p_id, 'replay', 'failed, timeout, zombie, dead_letter or cancelled');
    END IF;
    RETURN 'pending';
END $$;

-- prune: retention. Deletes finished jobs (their attempts and progress
-- history go with them) whose completed_at is older than p_completed_after
-- for completed jobs and p_failed_after for every other terminal state, at
-- most p_limit jobs per call: call it again while it returns p_limit. A
-- batch's children are deleted only once the batch itself is finished and
-- old enough (by the same two ages, after its own status), and the batch row
-- goes with its last child. Pending, retrying and running jobs are never
-- touched, nor are children of unfinished batches. One pruner at a time:
-- the advisory lock is transaction-scoped (returns 0 if another holds it).
CREATE OR REPLACE FUNCTION pgqueue.prune(
    p_completed_after interval,
    p_failed_after    interval,
    p_limit           integer DEFAULT 1000
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := clock_timestamp();
    v_deleted integer := 0;
    v_more    integer;
BEGIN
    IF p_completed_after IS NULL OR p_completed_after < interval '0'
       OR p_failed_after IS NULL OR p_failed_after < interval '0' THEN
        RAISE EXCEPTION 'pgqueue: prune: ages must be non-negative intervals' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'pgqueue: prune: limit must be at least 1' USING ERRCODE = '22023';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('pgqueue.prune')) THEN
        RETURN 0;
    END IF;

    DELETE FROM pgqueue.jobs j
     WHERE j.id IN (SELECT k.id FROM pgqueue.jobs k
                     WHERE k.status = 'completed' AND k.completed_at < v_now - p_completed_after
                       AND k.batch_id IS NULL
                     ORDER BY k.completed_at
                     LIMIT p_limit)
       AND j.status = 'completed';
    GET DIAGNOSTICS v_deleted = ROW_COUNT;

    DELETE FROM pgqueue.jobs j
     WHERE j.id IN (SELECT k.id FROM pgqueue.jobs k
                     WHERE k.status IN ('failed', 'timeout', 'zombie', 'dead_letter', 'cancelled')
                       AND k.completed_at < v_now - p_failed_after
                       AND k.batch_id IS NULL
                     ORDER BY k.completed_at
                     LIMIT p_limit - v_deleted)
       AND j.status IN ('failed', 'timeout', 'zombie', 'dead_letter', 'cancelled');
    GET DIAGNOSTICS v_more = ROW_COUNT;
    v_deleted := v_deleted + v_more;

    IF v_deleted < p_limit THEN
        DELETE FROM pgqueue.jobs j
         WHERE j.id IN (
                SELECT k.id
                  FROM pgqueue.batches b
                  JOIN pgqueue.jobs k ON k.batch_id = b.id
                 WHERE b.completed_at < v_now - CASE WHEN b.status = 'completed'
                                                     THEN p_completed_after
                                                     ELSE p_failed_after END
                 ORDER BY b.id, k.id
                 LIMIT p_limit - v_deleted)
           AND j.completed_at IS NOT NULL;
        GET DIAGNOSTICS v_more = ROW_COUNT;
        v_deleted := v_deleted + v_more;
    END IF;

    DELETE FROM pgqueue.batches b
     WHERE b.total = 0 AND b.completed_at IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs k WHERE k.batch_id = b.id);
    RETURN v_deleted;
END $$;
