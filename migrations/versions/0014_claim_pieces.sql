-- pgqueue revision 0014: the claim's due-job filter as small pieces.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- The claim held six copies of its due-job filter across its three
-- statements, and the queue gauges three of a rate window's count. They are
-- now functions of their own: waiting and claimable (which jobs may be
-- claimed; one-expression SQL functions that PostgreSQL inlines, so the
-- claim's plans and speed are unchanged) and rate_used (how much of a limited
-- queue's window is used, for the gauges). A change to which jobs are
-- claimable is now a change to one small function. The claim takes the same
-- jobs in the same order, under the same locks; all its statements now take
-- one time, the claim's.
--
-- Additive: the previous release keeps working against it (claim keeps its
-- name, arguments and result; the new functions are only added).
INSERT INTO pgqueue.served_revisions (revision) VALUES ('0014');

-- The claim's pieces. waiting and claimable are one-expression SQL functions,
-- which PostgreSQL inlines into the statements that call them: the planner
-- sees their conditions as if written there, so the claim index still serves
-- them and they cost nothing (tests/db/test_claim_plan.py checks the plan).

-- Whether job p_job waits to be claimed: pending or retrying, and not paused
-- (a paused job, a mirror among them, is out of the claim index).
CREATE OR REPLACE FUNCTION pgqueue.waiting(p_job pgqueue.jobs)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT p_job.status IN ('pending', 'retrying') AND NOT p_job.paused
$$;

-- Whether job p_job may be claimed at p_now by a worker of p_tasks (NULL: any
-- task): it waits, it is due, and its batch is not paused. The paused flag
-- keeps paused children out of the index; the batch test catches a child that
-- became due while its batch was pausing.
CREATE OR REPLACE FUNCTION pgqueue.claimable(p_job pgqueue.jobs, p_now timestamptz, p_tasks text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT pgqueue.waiting(p_job) AND p_job.run_at <= p_now
       AND (p_tasks IS NULL OR p_job.task = ANY(p_tasks))
       AND (p_job.batch_id IS NULL OR NOT pgqueue.batch_paused(p_job.batch_id))
$$;

-- How many jobs queue p_queue started in the rate window ending at p_now
-- (0 for a queue without a rate limit), as the queue gauges show it; the
-- claim writes the same sum out (see there).
CREATE OR REPLACE FUNCTION pgqueue.rate_used(p_queue pgqueue.queues, p_now timestamptz)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT sum(w.n) FROM unnest(p_queue.rate_at, p_queue.rate_n) AS w(at, n)
                      WHERE w.at > p_now - p_queue.rate_period), 0)::integer
$$;

-- claim: as sql/functions.sql describes it, its filters now the pieces above.
CREATE OR REPLACE FUNCTION pgqueue.claim(
    p_worker_id     text,
    p_queues        text[],
    p_limit         integer,
    p_lease_timeout interval DEFAULT '20 seconds',
    p_tasks         text[] DEFAULT NULL
) RETURNS SETOF pgqueue.jobs LANGUAGE plpgsql
SET jit = off SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_bitmapscan = off AS $$
DECLARE
    v_queues  text[];
    v_head    record;
    v_running integer;
    v_slots   integer := 0;
    v_keys    text[] := '{}';  -- keys locked by this claim with free slots,
    v_free    integer[] := '{}';  -- and how many jobs of each it may take
    v_limited boolean;         -- does a requested queue have a rate limit?
    v_now     timestamptz;     -- the lease's time (with rate limits, taken under their locks)
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
               -- rate_used's sum, written out: a function holding a subquery is
               -- not inlined, and a call of it costs every limited claim
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
           WHERE j.queue = q.name AND j.concurrency_key IS NOT NULL AND pgqueue.waiting(j)
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
                           AND pgqueue.waiting(j)
                         ORDER BY j.concurrency_key LIMIT 1) AS key
                  FROM unnest(v_queues) AS q(name)
                UNION ALL
                SELECT k.queue,
                       (SELECT j.concurrency_key FROM pgqueue.jobs j
                         WHERE j.queue = k.queue AND j.concurrency_key > k.key
                           AND j.concurrency_key IS NOT NULL AND pgqueue.waiting(j)
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
                         AND pgqueue.claimable(j, clock_timestamp(), p_tasks)
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

    IF NOT v_limited THEN
        -- The lease's time, taken after the keys' running jobs were counted:
        -- an attempt of a key never starts, in the history, before one whose
        -- end freed its slot. (With rate limits it is the time under their
        -- locks, which the window records.)
        v_now := clock_timestamp();
    END IF;

    IF NOT v_limited AND cardinality(v_keys) = 0 THEN
        -- the common case: no rate limit to count, no key with a free slot
        RETURN QUERY
        WITH ts AS (SELECT v_now AS now),
        candidates AS (
            SELECT c.id
              FROM unnest(v_queues) AS active(name)
              CROSS JOIN LATERAL (
                  SELECT j.id, j.priority, j.run_at
                    FROM pgqueue.jobs j
                   WHERE j.queue = active.name AND j.concurrency_key IS NULL
                     AND pgqueue.claimable(j, v_now, p_tasks)
                   ORDER BY j.priority DESC, j.run_at, j.id
                   LIMIT p_limit
                     FOR UPDATE SKIP LOCKED
              ) AS c
             ORDER BY c.priority DESC, c.run_at, c.id
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
    ELSIF v_limited THEN
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
                     AND pgqueue.claimable(j, v_now, p_tasks)
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
                             AND pgqueue.claimable(j, v_now, p_tasks)
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
        WITH ts AS (SELECT v_now AS now),
        plain AS (
            SELECT c.id, c.priority, c.run_at
              FROM unnest(v_queues) AS active(name)
              CROSS JOIN LATERAL (
                  SELECT j.id, j.priority, j.run_at
                    FROM pgqueue.jobs j
                   WHERE j.queue = active.name AND j.concurrency_key IS NULL
                     AND pgqueue.claimable(j, v_now, p_tasks)
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
                             AND pgqueue.claimable(j, v_now, p_tasks)
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
