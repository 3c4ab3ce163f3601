-- pgqueue revision 0007: a cheaper hot path for claims and completions.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- * complete_many and heartbeat are plpgsql, so their plans are cached.
-- * claim updates its candidates by primary key (= ANY), whatever the size
--   of the table.
-- * One statement-level trigger per UPDATE (jobs_changed) announces changes
--   and moves batch counters; it replaces the notify_changed row trigger.
-- * attempts.job_id is no longer a foreign key; jobs_deleted deletes a
--   deleted job's attempts instead, and jobs_truncated empties attempts when
--   jobs is truncated.
-- * complete_many and heartbeat find their rows by primary key, never by an
--   index on status (which made them scan every running job of the fleet).
-- * These functions run with jit = off: their plans are cached with the
--   estimates of their first call (a trigger's transition table of 20,000
--   rows, say), and JIT compiling a later 100-row call cost more than it.

-- Both tables at once, in the order workers take them (jobs, then attempts),
-- so a live worker's completion cannot deadlock with this migration.
LOCK TABLE pgqueue.jobs, pgqueue.attempts IN ACCESS EXCLUSIVE MODE;
ALTER TABLE pgqueue.attempts DROP CONSTRAINT attempts_job_id_fkey;
DROP TRIGGER jobs_notify_changed ON pgqueue.jobs;
DROP TRIGGER jobs_batch_counts_update ON pgqueue.jobs;
DROP TRIGGER jobs_batch_counts_delete ON pgqueue.jobs;
DROP FUNCTION pgqueue.notify_changed();
DROP FUNCTION pgqueue.batch_children_changed();
DROP FUNCTION pgqueue.heartbeat(text, bigint[], integer[]);
DROP FUNCTION pgqueue.complete_many(bigint[], integer[], jsonb[]);

-- claim: lease up to p_limit due jobs from p_queues (paused queues and
-- children of paused batches skipped),
-- highest priority first, then oldest run_at, then id. Each claimed job
-- becomes running under a new lease (attempts + 1) that stays valid while its
-- heartbeat is younger than p_lease_timeout. With p_tasks, only jobs of those
-- tasks are claimed, so a worker never takes a job it cannot run (e.g. during a
-- rolling deploy). Never returns more than p_limit rows; rows locked by
-- concurrent claimers are skipped, not waited on.
--
-- Concurrency keys (docs/scheduling.md): a job with a concurrency_key is
-- claimed only while fewer than its concurrency_limit jobs of that key are
-- running. Keyed jobs live in their own claim index, so jobs without a key pay
-- one probe of an (then empty) index. When keyed jobs wait, the claim walks
-- the distinct waiting keys of each queue (a skip scan: one index probe per
-- key, however long a key's backlog is), takes the first due job of each as
-- the key's head, and visits the heads in claim order: for each it takes the
-- key's transaction-scoped advisory lock without waiting (a key another
-- claimer holds is skipped, like a locked row), counts the key's running jobs
-- in a statement that starts after the lock was taken (so it sees every claim
-- of the key committed before), and keeps the key's free slots. The lock is
-- held until the claiming transaction commits, when the claimed jobs become
-- visible as running to the next claimer of the key. Within a key jobs are
-- taken in claim order (FIFO for equal priorities). Needs READ COMMITTED
-- when keyed jobs wait: a later statement must see newer commits.
--
-- Rate limits (docs/scheduling.md): a queue with rate_limit N starts at most N
-- jobs in any window of rate_period. Its row in pgqueue.queues holds the
-- window: the time and job count of each claim within the last period. The
-- claim locks the rows of the requested limited queues (FOR NO KEY UPDATE, in
-- name order), takes its time under the locks, takes at most N minus the
-- window's count from each, and records itself in the window in the statement
-- that leases the jobs (their leased_at is that time); the lock is held until
-- the claim commits, so claimers of a limited queue take turns and the count
-- is exact. When no requested queue has a limit (one lookup in pgqueue.queues
-- tells) the claim takes the plain path below and locks no queue row.
CREATE OR REPLACE FUNCTION pgqueue.claim(
    p_worker_id     text,
    p_queues        text[],
    p_limit         integer,
    p_lease_timeout interval DEFAULT '20 seconds',
    p_tasks         text[] DEFAULT NULL
) RETURNS SETOF pgqueue.jobs LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v_queues  text[];
    v_head    record;
    v_running integer;
    v_slots   integer := 0;
    v_keys    text[] := '{}';  -- keys locked by this claim with free slots,
    v_free    integer[] := '{}';  -- and how many jobs of each it may take
    v_limited boolean;         -- does a requested queue have a rate limit?
    v_now     timestamptz;     -- rate limits: the claim's time, taken under the locks
    v_rq      text[] := '{}';  -- rate-limited queues (locked by this claim)
    v_rcap    integer[] := '{}';  -- and how many jobs each may still start now
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'pgqueue: claim: limit must be at least 1, not %', p_limit USING ERRCODE = '22023';
    END IF;
    IF p_worker_id IS NULL OR p_worker_id = '' THEN
        RAISE EXCEPTION 'pgqueue: claim: worker_id must not be empty' USING ERRCODE = '22023';
    END IF;
    IF p_queues IS NULL OR cardinality(p_queues) = 0 THEN
        RAISE EXCEPTION 'pgqueue: claim: name at least one queue' USING ERRCODE = '22023';
    END IF;
    IF p_lease_timeout IS NULL OR p_lease_timeout <= interval '0' THEN
        RAISE EXCEPTION 'pgqueue: claim: lease_timeout must be positive' USING ERRCODE = '22023';
    END IF;

    SELECT COALESCE(array_agg(DISTINCT q.name), '{}'), COALESCE(bool_or(s.rate_limit IS NOT NULL), false)
      INTO v_queues, v_limited
      FROM unnest(p_queues) AS q(name)
      LEFT JOIN pgqueue.queues s ON s.name = q.name
     WHERE s.paused IS NOT TRUE;

    IF v_limited THEN
        -- Rate limits: lock the limited queues' rows (in name order, so claimers
        -- never deadlock), then read them in a new statement, which sees the
        -- window as the previous holder committed it.
        PERFORM 1 FROM pgqueue.queues s
          WHERE s.name = ANY(v_queues) AND s.rate_limit IS NOT NULL
          ORDER BY s.name
            FOR NO KEY UPDATE;
        v_now := clock_timestamp();
        SELECT COALESCE(array_agg(s.name), '{}'),
               COALESCE(array_agg(GREATEST(s.rate_limit - (
                   SELECT COALESCE(sum(w.n), 0) FROM unnest(s.rate_at, s.rate_n) AS w(at, n)
                    WHERE w.at > v_now - s.rate_period), 0)::integer), '{}')
          INTO v_rq, v_rcap
          FROM pgqueue.queues s
         WHERE s.name = ANY(v_queues) AND s.rate_limit IS NOT NULL;
        -- a queue without room this period is not searched at all
        SELECT COALESCE(array_agg(q.name), '{}') INTO v_queues
          FROM unnest(v_queues) AS q(name)
         WHERE NOT EXISTS (SELECT 1 FROM unnest(v_rq, v_rcap) AS r(name, cap)
                            WHERE r.name = q.name AND r.cap = 0);
    END IF;

    -- any keyed job waiting? (an ordered probe, so it stays an index scan)
    PERFORM FROM unnest(v_queues) AS q(name)
      CROSS JOIN LATERAL (
          SELECT j.concurrency_key FROM pgqueue.jobs j
           WHERE j.queue = q.name AND j.concurrency_key IS NOT NULL
             AND j.status IN ('pending', 'retrying') AND NOT j.paused
           ORDER BY j.concurrency_key LIMIT 1) AS k
     LIMIT 1;
    IF FOUND THEN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'pgqueue: claim: jobs with a concurrency_key need a READ COMMITTED transaction'
                USING ERRCODE = '25000';
        END IF;
        FOR v_head IN
            WITH RECURSIVE keys AS (
                -- the distinct waiting keys of each queue, one index probe each
                SELECT q.name AS queue,
                       (SELECT j.concurrency_key FROM pgqueue.jobs j
                         WHERE j.queue = q.name AND j.concurrency_key IS NOT NULL
                           AND j.status IN ('pending', 'retrying') AND NOT j.paused
                         ORDER BY j.concurrency_key LIMIT 1) AS key
                  FROM unnest(v_queues) AS q(name)
                UNION ALL
                SELECT k.queue,
                       (SELECT j.concurrency_key FROM pgqueue.jobs j
                         WHERE j.queue = k.queue AND j.concurrency_key > k.key
                           AND j.concurrency_key IS NOT NULL
                           AND j.status IN ('pending', 'retrying') AND NOT j.paused
                         ORDER BY j.concurrency_key LIMIT 1)
                  FROM keys k
                 WHERE k.key IS NOT NULL
            )
            SELECT * FROM (
                SELECT DISTINCT ON (h.concurrency_key) h.concurrency_key AS key,
                       h.concurrency_limit AS lim, h.priority, h.run_at, h.id
                  FROM keys
                  CROSS JOIN LATERAL (
                      -- the key's head in this queue: its first due job
                      SELECT j.concurrency_key, j.concurrency_limit, j.priority, j.run_at, j.id
                        FROM pgqueue.jobs j
                       WHERE j.queue = keys.queue AND j.concurrency_key = keys.key
                         AND j.status IN ('pending', 'retrying') AND NOT j.paused
                         AND j.run_at <= clock_timestamp()
                         AND (p_tasks IS NULL OR j.task = ANY(p_tasks))
                         AND (j.batch_id IS NULL OR NOT pgqueue.batch_paused(j.batch_id))
                       ORDER BY j.priority DESC, j.run_at, j.id
                       LIMIT 1
                  ) AS h
                 WHERE keys.key IS NOT NULL
                 ORDER BY h.concurrency_key, h.priority DESC, h.run_at, h.id
            ) AS heads
             ORDER BY heads.priority DESC, heads.run_at, heads.id
        LOOP
            EXIT WHEN v_slots >= p_limit;
            -- a key already full is skipped without taking its lock
            CONTINUE WHEN (SELECT count(*) FROM pgqueue.jobs j
                            WHERE j.concurrency_key = v_head.key AND j.status = 'running') >= v_head.lim;
            -- another claimer holds the key: skip it, like a locked row
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtext('pgqueue.concurrency_key'),
                                                        hashtext(v_head.key));
            -- a new statement, so a new snapshot: it sees every claim of the key
            -- that committed before the lock was ours
            SELECT count(*) INTO v_running
              FROM pgqueue.jobs j
             WHERE j.concurrency_key = v_head.key AND j.status = 'running';
            CONTINUE WHEN v_running >= v_head.lim;
            v_keys := v_keys || v_head.key;
            v_free := v_free || LEAST(v_head.lim - v_running, p_limit - v_slots);
            v_slots := v_slots + LEAST(v_head.lim - v_running, p_limit - v_slots);
        END LOOP;
    END IF;

    IF v_limited THEN
        RETURN QUERY
        WITH ts AS (SELECT v_now AS now),
        caps AS (SELECT r.name, r.cap FROM unnest(v_rq, v_rcap) AS r(name, cap)),
        plain AS (
            SELECT c.id, c.priority, c.run_at, active.name AS queue
              FROM unnest(v_queues) AS active(name)
              LEFT JOIN caps ON caps.name = active.name
              CROSS JOIN LATERAL (
                  SELECT j.id, j.priority, j.run_at
                    FROM pgqueue.jobs j
                   WHERE j.queue = active.name AND j.concurrency_key IS NULL
                     AND j.status IN ('pending', 'retrying') AND NOT j.paused
                     AND j.run_at <= (SELECT now FROM ts)
                     AND (p_tasks IS NULL OR j.task = ANY(p_tasks))
                     -- the paused flag keeps paused children out of the index; this
                     -- catches a child that became due while its batch was pausing
                     AND (j.batch_id IS NULL OR NOT pgqueue.batch_paused(j.batch_id))
                   ORDER BY j.priority DESC, j.run_at, j.id
                   LIMIT LEAST(p_limit, caps.cap)
                     FOR UPDATE SKIP LOCKED
              ) AS c
        ),
        keyed AS (
            -- at most the free slots of each key locked above, in claim order
            SELECT r.id, r.priority, r.run_at, r.queue
              FROM (SELECT c.id, c.priority, c.run_at, active.name AS queue, k.free,
                           row_number() OVER (PARTITION BY k.key
                                              ORDER BY c.priority DESC, c.run_at, c.id) AS n
                      FROM unnest(v_keys, v_free) AS k(key, free)
                      CROSS JOIN unnest(v_queues) AS active(name)
                      CROSS JOIN LATERAL (
                          SELECT j.id, j.priority, j.run_at
                            FROM pgqueue.jobs j
                           WHERE j.queue = active.name AND j.concurrency_key = k.key
                             AND j.status IN ('pending', 'retrying') AND NOT j.paused
                             AND j.run_at <= (SELECT now FROM ts)
                             AND (p_tasks IS NULL OR j.task = ANY(p_tasks))
                             AND (j.batch_id IS NULL OR NOT pgqueue.batch_paused(j.batch_id))
                           ORDER BY j.priority DESC, j.run_at, j.id
                           LIMIT k.free
                             FOR UPDATE SKIP LOCKED
                      ) AS c) AS r
             WHERE r.n <= r.free
        ),
        candidates AS (
            -- at most each limited queue's room, in claim order
            SELECT u.id, u.queue
              FROM (SELECT p.*, row_number() OVER (PARTITION BY p.queue
                                                   ORDER BY p.priority DESC, p.run_at, p.id) AS n
                      FROM (SELECT * FROM plain UNION ALL SELECT * FROM keyed) AS p) AS u
              LEFT JOIN caps ON caps.name = u.queue
             WHERE u.n <= COALESCE(caps.cap, p_limit)
             ORDER BY u.priority DESC, u.run_at, u.id
             LIMIT p_limit
        ),
        claimed AS (
            UPDATE pgqueue.jobs j
               SET status = 'running',
                   attempts = j.attempts + 1,
                   worker_id = p_worker_id,
                   lease_timeout = p_lease_timeout,
                   progress = 0,
                   progress_message = NULL,
                   started_at = COALESCE(j.started_at, GREATEST(ts.now, j.created_at)),
                   leased_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at),
                   heartbeat_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
              FROM ts
             WHERE j.id = ANY (ARRAY(SELECT candidates.id FROM candidates))
            RETURNING j.*
        ),
        counted AS (
            -- record this claim in each limited queue's window, dropping what
            -- has left the window
            UPDATE pgqueue.queues s
               SET rate_at = ARRAY(SELECT w.at FROM unnest(s.rate_at, s.rate_n) WITH ORDINALITY AS w(at, n, i)
                                    WHERE w.at > v_now - s.rate_period ORDER BY w.i) || v_now,
                   rate_n = ARRAY(SELECT w.n FROM unnest(s.rate_at, s.rate_n) WITH ORDINALITY AS w(at, n, i)
                                   WHERE w.at > v_now - s.rate_period ORDER BY w.i) || c.n
              FROM (SELECT claimed.queue, count(*)::integer AS n FROM claimed GROUP BY claimed.queue) AS c
             WHERE s.name = c.queue AND s.name = ANY(v_rq)
        )
        SELECT * FROM claimed;
    ELSE
        RETURN QUERY
        WITH ts AS (SELECT clock_timestamp() AS now),
        plain AS (
            SELECT c.id, c.priority, c.run_at
              FROM unnest(v_queues) AS active(name)
              CROSS JOIN LATERAL (
                  SELECT j.id, j.priority, j.run_at
                    FROM pgqueue.jobs j
                   WHERE j.queue = active.name AND j.concurrency_key IS NULL
                     AND j.status IN ('pending', 'retrying') AND NOT j.paused
                     AND j.run_at <= (SELECT now FROM ts)
                     AND (p_tasks IS NULL OR j.task = ANY(p_tasks))
                     -- the paused flag keeps paused children out of the index; this
                     -- catches a child that became due while its batch was pausing
                     AND (j.batch_id IS NULL OR NOT pgqueue.batch_paused(j.batch_id))
                   ORDER BY j.priority DESC, j.run_at, j.id
                   LIMIT p_limit
                     FOR UPDATE SKIP LOCKED
              ) AS c
        ),
        keyed AS (
            -- at most the free slots of each key locked above, in claim order
            SELECT r.id, r.priority, r.run_at
              FROM (SELECT c.id, c.priority, c.run_at, k.free,
                           row_number() OVER (PARTITION BY k.key
                                              ORDER BY c.priority DESC, c.run_at, c.id) AS n
                      FROM unnest(v_keys, v_free) AS k(key, free)
                      CROSS JOIN unnest(v_queues) AS active(name)
                      CROSS JOIN LATERAL (
                          SELECT j.id, j.priority, j.run_at
                            FROM pgqueue.jobs j
                           WHERE j.queue = active.name AND j.concurrency_key = k.key
                             AND j.status IN ('pending', 'retrying') AND NOT j.paused
                             AND j.run_at <= (SELECT now FROM ts)
                             AND (p_tasks IS NULL OR j.task = ANY(p_tasks))
                             AND (j.batch_id IS NULL OR NOT pgqueue.batch_paused(j.batch_id))
                           ORDER BY j.priority DESC, j.run_at, j.id
                           LIMIT k.free
                             FOR UPDATE SKIP LOCKED
                      ) AS c) AS r
             WHERE r.n <= r.free
        ),
        candidates AS (
            SELECT u.id
              FROM (SELECT * FROM plain UNION ALL SELECT * FROM keyed) AS u
             ORDER BY u.priority DESC, u.run_at, u.id
             LIMIT p_limit
        )
        UPDATE pgqueue.jobs j
           SET status = 'running',
               attempts = j.attempts + 1,
               worker_id = p_worker_id,
               lease_timeout = p_lease_timeout,
               progress = 0,
               progress_message = NULL,
               started_at = COALESCE(j.started_at, GREATEST(ts.now, j.created_at)),
               leased_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at),
               heartbeat_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
          FROM ts
         WHERE j.id = ANY (ARRAY(SELECT candidates.id FROM candidates))
        RETURNING j.*;
    END IF;
END $$;

-- heartbeat: refresh the leases this worker still holds, in one statement.
-- Returns the leases that are still this worker's; `refreshed` is false for a
-- lease whose row another transaction has locked right now (it is skipped, not
-- waited on, so one busy row cannot stall the heartbeat of all the others).
-- A lease missing from the result was lost (rescued, cancelled or timed out)
-- and its task must stop.
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

-- complete_many: finish many attempts successfully in one statement. Each
-- item is a lease (id, attempt) and the task's JSON result. Returns the
-- leases that were applied; a missing one was stale and its result refused.
-- started_at is filled with COALESCE and completed_at clamped with GREATEST
-- in the same UPDATE, so completed_at >= started_at >= created_at always.
-- (plpgsql, like heartbeat, so its plan is cached per session: it runs for
-- every batch of completions.)
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

-- Runs once per UPDATE statement on jobs, with the statement's old and new
-- rows. It announces each job whose state or progress changed on
-- pgqueue_job (and a running job's cancel on pgqueue_cancel, a job pending
-- again on pgqueue_enqueue), then applies batch children's moves batch by
-- batch in id order (so concurrent statements lock batch rows in the same
-- order and never deadlock on them). One statement-level trigger instead of a
-- row trigger per job: a claim or completion of 100 jobs runs it once.
CREATE OR REPLACE FUNCTION pgqueue.jobs_changed()
RETURNS trigger LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d record;
BEGIN
    PERFORM pg_notify('pgqueue_job', json_build_object(
                'id', n.id, 'status', n.status, 'progress', n.progress, 'queue', n.queue,
                'owner', n.owner, 'batch_id', n.batch_id,
                'message', left(n.progress_message, 200))::text),
            CASE WHEN n.status = 'cancelled' AND o.status = 'running'
                 THEN pg_notify('pgqueue_cancel', n.id::text) END,
            CASE WHEN n.status = 'pending' AND o.status <> 'pending'
                 THEN pg_notify('pgqueue_enqueue', n.queue) END
       FROM old_jobs o JOIN new_jobs n ON n.id = o.id
      WHERE o.status <> n.status OR o.progress <> n.progress
         OR o.progress_message IS DISTINCT FROM n.progress_message;
    FOR d IN
        SELECT o.batch_id, array_agg(o.status) AS was, array_agg(n.status) AS now,
               array_agg(n.id) AS ids
          FROM old_jobs o JOIN new_jobs n ON n.id = o.id
         WHERE o.batch_id IS NOT NULL AND o.status <> n.status
         GROUP BY o.batch_id
         ORDER BY o.batch_id
    LOOP
        PERFORM pgqueue.batch_apply(d.batch_id, d.was, d.now, d.ids);
    END LOOP;
    RETURN NULL;
END $$;

-- Runs once per DELETE statement on jobs: deletes the jobs' attempts (the
-- attempts table has no foreign key, so recording an attempt costs no
-- per-row check; this is its ON DELETE CASCADE) and applies batch children's
-- removal as jobs_changed applies their moves.
CREATE OR REPLACE FUNCTION pgqueue.jobs_deleted()
RETURNS trigger LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d record;
BEGIN
    DELETE FROM pgqueue.attempts a USING old_jobs o WHERE a.job_id = o.id;
    FOR d IN
        SELECT o.batch_id, array_agg(o.status) AS was,
               array_agg(NULL::pgqueue.job_status) AS now
          FROM old_jobs o
         WHERE o.batch_id IS NOT NULL
         GROUP BY o.batch_id
         ORDER BY o.batch_id
    LOOP
        PERFORM pgqueue.batch_apply(d.batch_id, d.was, d.now);
    END LOOP;
    RETURN NULL;
END $$;

-- Runs once per TRUNCATE of jobs: empties attempts as well. With the foreign
-- key, TRUNCATE jobs failed unless attempts went with it; without this, a
-- TRUNCATE ... RESTART IDENTITY would leave attempts whose ids new jobs reuse.
-- (DELETE, not TRUNCATE: attempts may be in the same TRUNCATE statement.)
CREATE OR REPLACE FUNCTION pgqueue.jobs_truncated()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgqueue.attempts;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_changed
    AFTER UPDATE ON pgqueue.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.jobs_changed();

CREATE TRIGGER jobs_deleted
    AFTER DELETE ON pgqueue.jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.jobs_deleted();

CREATE TRIGGER jobs_truncated
    AFTER TRUNCATE ON pgqueue.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.jobs_truncated();

