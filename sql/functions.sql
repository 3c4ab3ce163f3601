-- pgqueue stored functions: every state transition of a job, one function each.
--
-- Each transition names the states it may leave in its WHERE clause and, for
-- worker calls, the lease (job id + attempt number). When nothing matches it
-- raises one of these SQLSTATEs (pgqueue/errors.py maps them to exceptions):
--   PQ001  the job does not exist
--   PQ002  the job is not in a state this transition may leave
--   PQ003  the caller's lease is stale (rescued, timed out, cancelled, re-run)
--   PQ004  the batch does not exist
--   22023  invalid argument (the message names it)
--
-- Timestamps come from clock_timestamp() taken once per statement and are
-- clamped with GREATEST against the row's earlier timestamps, so the CHECK
-- constraints on jobs hold whatever the interleaving of transactions and
-- whatever their start times.

-- Raise the precise error for a worker call whose lease did not match.
CREATE OR REPLACE FUNCTION pgqueue.raise_lease_error(p_id bigint, p_attempt integer, p_action text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_job pgqueue.jobs%ROWTYPE;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: cannot % job %: it does not exist', p_action, p_id
            USING ERRCODE = 'PQ001';
    END IF;
    RAISE EXCEPTION 'pgqueue: cannot % job % attempt %: the lease is no longer held (job is % at attempt %)',
        p_action, p_id, p_attempt, v_job.status, v_job.attempts
        USING ERRCODE = 'PQ003';
END $$;

-- Raise the precise error for an operator call on a job in the wrong state.
CREATE OR REPLACE FUNCTION pgqueue.raise_state_error(p_id bigint, p_action text, p_allowed text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_status pgqueue.job_status;
BEGIN
    SELECT status INTO v_status FROM pgqueue.jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: cannot % job %: it does not exist', p_action, p_id
            USING ERRCODE = 'PQ001';
    END IF;
    RAISE EXCEPTION 'pgqueue: cannot % job %: it is %, and only % jobs can be', p_action, p_id, v_status, p_allowed
        USING ERRCODE = 'PQ002';
END $$;

-- Delay before retry number p_attempt + 1: exponential (1 s, 2 s, 4 s, ...)
-- capped at one hour, with +/-25 % jitter so failed jobs do not return in lockstep.
CREATE OR REPLACE FUNCTION pgqueue.retry_backoff(p_attempt integer)
RETURNS interval LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(3600, power(2, greatest(p_attempt - 1, 0)))
                                 * (0.75 + random() * 0.5))
$$;

-- Whether batch p_id is paused (its children must not be claimed).
CREATE OR REPLACE FUNCTION pgqueue.batch_paused(p_id bigint)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pgqueue.batches b WHERE b.id = p_id AND b.paused)
$$;

-- enqueue: insert one pending job; returns its id. Visible iff the caller's
-- transaction commits. With p_dedupe_key it is a unique job (see
-- enqueue_many): when a job of the same task already holds the key, no job
-- is created and that job's id is returned.
CREATE OR REPLACE FUNCTION pgqueue.enqueue(
    p_task          text,
    p_args          jsonb DEFAULT '{}',
    p_queue         text DEFAULT 'default',
    p_priority      integer DEFAULT 0,
    p_run_at        timestamptz DEFAULT NULL,
    p_max_attempts  integer DEFAULT 1,
    p_timeout       interval DEFAULT NULL,
    p_owner         text DEFAULT NULL,
    p_metadata      jsonb DEFAULT '{}',
    p_dedupe_key    text DEFAULT NULL,
    p_dedupe_scope  text DEFAULT 'pending',
    p_dedupe_window interval DEFAULT NULL,
    p_concurrency_key   text DEFAULT NULL,
    p_concurrency_limit integer DEFAULT 1
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_dedupe_key IS NULL AND p_concurrency_key IS NULL THEN
        INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner, metadata)
        VALUES (p_task, COALESCE(p_args, '{}'), COALESCE(p_queue, 'default'), COALESCE(p_priority, 0),
                COALESCE(p_run_at, now()), COALESCE(p_max_attempts, 1), p_timeout, p_owner,
                COALESCE(p_metadata, '{}'))
        RETURNING id INTO v_id;
        RETURN v_id;
    END IF;
    SELECT e.id INTO v_id
      FROM pgqueue.enqueue_many(
               ARRAY[p_task], ARRAY[COALESCE(p_args, '{}')], ARRAY[COALESCE(p_queue, 'default')],
               ARRAY[COALESCE(p_priority, 0)], ARRAY[p_run_at], ARRAY[COALESCE(p_max_attempts, 1)],
               ARRAY[p_timeout], ARRAY[p_owner], ARRAY[COALESCE(p_metadata, '{}')], NULL,
               ARRAY[p_dedupe_key], ARRAY[p_dedupe_scope], ARRAY[p_dedupe_window],
               ARRAY[p_concurrency_key], ARRAY[p_concurrency_limit]) AS e(id);
    RETURN v_id;
END $$;

-- enqueue_many: insert many jobs in one statement, all or nothing. The arrays
-- are parallel (item i of each describes job i); ids come back in item order.
-- An invalid item raises 22023 naming its index (0-based) and the problem.
-- With p_batch_id the jobs are children of that batch (see enqueue_batch).
--
-- Unique jobs: an item with a dedupe key (p_dedupe_keys[i] not null) is a
-- duplicate of the job of the same task that holds the key, if there is one,
-- and gets that job's id instead of a new job. Scopes (p_dedupe_scopes[i]):
--   pending  the job holds its key until it first starts (or is cancelled)
--   active   ... until it finishes (any terminal state)
--   window   a duplicate is any job of the task and key created within
--            p_dedupe_windows[i] (READ COMMITTED only: see below)
-- Items of the same task and key collapse into one job, made from the first
-- of them. pending and active keys are held through the unique index
-- jobs_dedupe_held_idx: a concurrent duplicate waits for the first insert's
-- transaction, and then finds its job. A moving window cannot be an index, so
-- window keys are serialised by a transaction-scoped advisory lock per key,
-- held until the enqueuing transaction ends; the check after it must see
-- jobs committed meanwhile, hence READ COMMITTED. Keys are taken in (task,
-- key) order, so concurrent bulk enqueues cannot deadlock on them.
--
-- Concurrency keys: an item with p_concurrency_keys[i] is claimed only while
-- fewer than p_concurrency_limits[i] jobs of that key are running (see claim
-- and docs/scheduling.md).
CREATE OR REPLACE FUNCTION pgqueue.enqueue_many(
    p_tasks          text[],
    p_args           jsonb[],
    p_queues         text[],
    p_priorities     integer[],
    p_run_ats        timestamptz[],
    p_max_attempts   integer[],
    p_timeouts       interval[],
    p_owners         text[],
    p_metadata       jsonb[],
    p_batch_id       bigint DEFAULT NULL,
    p_dedupe_keys    text[] DEFAULT NULL,
    p_dedupe_scopes  text[] DEFAULT NULL,
    p_dedupe_windows interval[] DEFAULT NULL,
    p_concurrency_keys   text[] DEFAULT NULL,
    p_concurrency_limits integer[] DEFAULT NULL
) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    v_n       integer := cardinality(p_tasks);
    v_bad     record;
    v_plain   bigint[];  -- ids of the items without a key, ascending = item order
    g_tasks   text[];    -- the groups of keyed items, in (task, key) order:
    g_keys    text[];    --   task and key,
    g_scopes  text[];    --   scope and window of the group's first item,
    g_windows interval[];
    g_first   integer[]; --   the index of that item (1-based),
    g_ids     bigint[];  --   and the job found or created for the group
    v_round   integer := 0;
BEGIN
    IF v_n IS NULL THEN
        RAISE EXCEPTION 'pgqueue: enqueue_many: tasks must not be null' USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_args) <> v_n OR cardinality(p_queues) <> v_n OR cardinality(p_priorities) <> v_n
       OR cardinality(p_run_ats) <> v_n OR cardinality(p_max_attempts) <> v_n
       OR cardinality(p_timeouts) <> v_n OR cardinality(p_owners) <> v_n
       OR cardinality(p_metadata) <> v_n
       OR (p_dedupe_keys IS NOT NULL
           AND (cardinality(p_dedupe_keys) <> v_n
                OR cardinality(p_dedupe_scopes) IS DISTINCT FROM v_n
                OR cardinality(p_dedupe_windows) IS DISTINCT FROM v_n))
       OR (p_concurrency_keys IS NOT NULL
           AND (cardinality(p_concurrency_keys) <> v_n
                OR cardinality(p_concurrency_limits) IS DISTINCT FROM v_n)) THEN
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
               WHEN dk = '' OR length(dk) > 512 THEN 'dedupe_key must be 1 to 512 characters'
               WHEN dk IS NOT NULL AND p_batch_id IS NOT NULL
                   THEN 'children of a batch cannot have a dedupe_key'
               WHEN dk IS NOT NULL AND (ds IS NULL OR ds NOT IN ('pending', 'active', 'window'))
                   THEN 'dedupe_scope must be pending, active or window'
               WHEN ds = 'window' AND (dw IS NULL OR dw <= interval '0')
                   THEN 'dedupe_scope window needs a positive window'
               WHEN ck = '' OR length(ck) > 512 THEN 'concurrency_key must be 1 to 512 characters'
               WHEN ck IS NOT NULL AND (cl IS NULL OR cl < 1)
                   THEN 'concurrency_limit must be at least 1'
               WHEN ck IS NOT NULL AND p_batch_id IS NOT NULL
                   THEN 'children of a batch cannot have a concurrency_key'
               ELSE 'dedupe_scope window needs a READ COMMITTED transaction'
           END AS problem
      INTO v_bad
      FROM unnest(p_tasks, p_args, p_queues, p_max_attempts, p_timeouts, p_metadata,
                  p_dedupe_keys, p_dedupe_scopes, p_dedupe_windows, p_concurrency_keys,
                  p_concurrency_limits)
           WITH ORDINALITY AS u(t, a, q, m, tm, md, dk, ds, dw, ck, cl, ord)
     WHERE t IS NULL OR t = '' OR length(t) > 256
        OR a IS NULL OR jsonb_typeof(a) <> 'object'
        OR q IS NULL OR q = '' OR length(q) > 128
        OR m IS NULL OR m < 1
        OR tm <= interval '0'
        OR md IS NULL OR jsonb_typeof(md) <> 'object'
        OR (dk IS NOT NULL
            AND (dk = '' OR length(dk) > 512 OR p_batch_id IS NOT NULL
                 OR ds IS NULL OR ds NOT IN ('pending', 'active', 'window')
                 OR (ds = 'window'
                     AND (dw IS NULL OR dw <= interval '0'
                          OR current_setting('transaction_isolation') <> 'read committed'))))
        OR (ck IS NOT NULL AND (ck = '' OR length(ck) > 512 OR cl IS NULL OR cl < 1
                                OR p_batch_id IS NOT NULL))
     ORDER BY ord
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgqueue: enqueue_many: item %: %; nothing was enqueued', v_bad.idx, v_bad.problem
            USING ERRCODE = '22023';
    END IF;

    IF p_dedupe_keys IS NULL
       OR NOT EXISTS (SELECT 1 FROM unnest(p_dedupe_keys) AS k WHERE k IS NOT NULL) THEN
        -- no unique jobs: one plain INSERT
        RETURN QUERY
        INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner,
                                  metadata, batch_id, concurrency_key, concurrency_limit)
        SELECT t, a, q, COALESCE(p, 0), COALESCE(r, now()), m, tm, o, md, p_batch_id,
               ck, CASE WHEN ck IS NOT NULL THEN cl END
          FROM unnest(p_tasks, p_args, p_queues, p_priorities, p_run_ats, p_max_attempts,
                      p_timeouts, p_owners, p_metadata, p_concurrency_keys, p_concurrency_limits)
               WITH ORDINALITY AS u(t, a, q, p, r, m, tm, o, md, ck, cl, ord)
         ORDER BY ord
        RETURNING id;
        RETURN;
    END IF;

    -- The items without a key: one INSERT; identity values follow item order.
    WITH plain AS (
        INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner,
                                  metadata, concurrency_key, concurrency_limit)
        SELECT t, a, q, COALESCE(p, 0), COALESCE(r, now()), m, tm, o, md,
               ck, CASE WHEN ck IS NOT NULL THEN cl END
          FROM unnest(p_tasks, p_args, p_queues, p_priorities, p_run_ats, p_max_attempts,
                      p_timeouts, p_owners, p_metadata, p_dedupe_keys, p_concurrency_keys,
                      p_concurrency_limits)
               WITH ORDINALITY AS u(t, a, q, p, r, m, tm, o, md, dk, ck, cl, ord)
         WHERE dk IS NULL
         ORDER BY ord
        RETURNING id
    )
    SELECT COALESCE(array_agg(id ORDER BY id), '{}') INTO v_plain FROM plain;

    -- The groups of keyed items.
    SELECT array_agg(t ORDER BY t, dk), array_agg(dk ORDER BY t, dk), array_agg(ds ORDER BY t, dk),
           array_agg(dw ORDER BY t, dk), array_agg(ord::integer ORDER BY t, dk)
      INTO g_tasks, g_keys, g_scopes, g_windows, g_first
      FROM (SELECT DISTINCT ON (t, dk) t, dk, ds, dw, ord
              FROM unnest(p_tasks, p_dedupe_keys, p_dedupe_scopes, p_dedupe_windows)
                   WITH ORDINALITY AS u(t, dk, ds, dw, ord)
             WHERE dk IS NOT NULL
             ORDER BY t, dk, ord) AS g;
    g_ids := array_fill(NULL::bigint, ARRAY[cardinality(g_tasks)]);

    -- Window keys: one enqueuer of a key at a time, until its transaction ends.
    PERFORM pg_advisory_xact_lock(hashtext('pgqueue.dedupe'), hashtext(g.t || chr(31) || g.k))
       FROM unnest(g_tasks, g_keys, g_scopes) WITH ORDINALITY AS g(t, k, s, i)
      WHERE g.s = 'window'
      ORDER BY g.i;

    LOOP
        v_round := v_round + 1;
        -- Groups whose key is taken: the job that holds it (window: the newest
        -- job of the key created within the window). Each pass is a new
        -- statement, so it sees jobs committed since the last one.
        SELECT array_agg(COALESCE(g.id, found.id) ORDER BY g.i) INTO g_ids
          FROM unnest(g_tasks, g_keys, g_scopes, g_windows, g_ids)
               WITH ORDINALITY AS g(t, k, s, w, id, i)
          LEFT JOIN LATERAL (
              SELECT j.id
                FROM pgqueue.jobs j
               WHERE g.id IS NULL AND j.task = g.t AND j.dedupe_key = g.k
                 AND CASE WHEN g.s = 'window' THEN j.created_at > clock_timestamp() - g.w
                          ELSE (j.dedupe_scope = 'pending' AND j.status = 'pending' AND j.attempts = 0)
                               OR (j.dedupe_scope = 'active'
                                   AND j.status IN ('pending', 'retrying', 'running'))
                     END
               ORDER BY j.created_at DESC, j.id DESC
               LIMIT 1
          ) AS found ON true;
        EXIT WHEN array_position(g_ids, NULL) IS NULL;
        IF v_round > 10 THEN
            RAISE EXCEPTION 'pgqueue: enqueue_many: dedupe keys kept changing hands; try again'
                USING ERRCODE = '40001';
        END IF;

        -- The other groups: a job each, made from the group's first item. A
        -- key taken meanwhile by a concurrent transaction makes its row wait
        -- for that transaction, then skip; the next pass finds its job.
        WITH created AS (
            INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout,
                                      owner, metadata, dedupe_key, dedupe_scope, concurrency_key,
                                      concurrency_limit)
            SELECT g.t, p_args[g.f], p_queues[g.f], COALESCE(p_priorities[g.f], 0),
                   COALESCE(p_run_ats[g.f], now()), p_max_attempts[g.f], p_timeouts[g.f],
                   p_owners[g.f], p_metadata[g.f], g.k, g.s, p_concurrency_keys[g.f],
                   CASE WHEN p_concurrency_keys[g.f] IS NOT NULL THEN p_concurrency_limits[g.f] END
              FROM unnest(g_tasks, g_keys, g_scopes, g_first, g_ids)
                   WITH ORDINALITY AS g(t, k, s, f, id, i)
             WHERE g.id IS NULL
             ORDER BY g.i
            ON CONFLICT DO NOTHING
            RETURNING id, task, dedupe_key
        )
        SELECT array_agg(COALESCE(g.id, created.id) ORDER BY g.i) INTO g_ids
          FROM unnest(g_tasks, g_keys, g_ids) WITH ORDINALITY AS g(t, k, id, i)
          LEFT JOIN created ON created.task = g.t AND created.dedupe_key = g.k;
        EXIT WHEN array_position(g_ids, NULL) IS NULL;
    END LOOP;

    RETURN QUERY
    WITH items AS (
        SELECT u.ord, u.t, u.dk,
               count(*) FILTER (WHERE u.dk IS NULL) OVER (ORDER BY u.ord) AS plain_n
          FROM unnest(p_tasks, p_dedupe_keys) WITH ORDINALITY AS u(t, dk, ord)
    )
    SELECT CASE WHEN items.dk IS NULL THEN v_plain[items.plain_n::integer] ELSE g.id END
      FROM items
      LEFT JOIN unnest(g_tasks, g_keys, g_ids) AS g(t, k, id)
        ON g.t = items.t AND g.k = items.dk
     ORDER BY items.ord;
END $$;

-- enqueue_bulk: insert many jobs of one task that share their options, all
-- or nothing: enqueue_many with every option given once instead of once per
-- item. p_args holds each job's arguments; ids come back in item order. A bad
-- option raises 22023 naming it, a bad item 22023 naming its index (0-based).
-- With p_dedupe_keys or p_concurrency_keys (one per item, NULL for none) the
-- items go through enqueue_many, under its rules for unique and keyed jobs.
CREATE OR REPLACE FUNCTION pgqueue.enqueue_bulk(
    p_task          text,
    p_args          jsonb[],
    p_queue         text DEFAULT 'default',
    p_priority      integer DEFAULT 0,
    p_run_at        timestamptz DEFAULT NULL,
    p_max_attempts  integer DEFAULT 1,
    p_timeout       interval DEFAULT NULL,
    p_owner         text DEFAULT NULL,
    p_metadata      jsonb DEFAULT '{}',
    p_dedupe_keys   text[] DEFAULT NULL,
    p_dedupe_scope  text DEFAULT 'pending',
    p_dedupe_window interval DEFAULT NULL,
    p_concurrency_keys  text[] DEFAULT NULL,
    p_concurrency_limit integer DEFAULT 1
) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    v_n       integer := cardinality(p_args);
    v_problem text;
    v_bad     bigint;
BEGIN
    v_problem := CASE
        WHEN v_n IS NULL THEN 'args must not be null'
        WHEN p_task IS NULL OR p_task = '' OR length(p_task) > 256 THEN 'task must be 1 to 256 characters'
        WHEN p_queue IS NULL OR p_queue = '' OR length(p_queue) > 128 THEN 'queue must be 1 to 128 characters'
        WHEN p_max_attempts IS NULL OR p_max_attempts < 1 THEN 'max_attempts must be at least 1'
        WHEN p_timeout <= interval '0' THEN 'timeout must be positive'
        WHEN p_owner = '' OR length(p_owner) > 256 THEN 'owner must be 1 to 256 characters'
        WHEN p_metadata IS NULL OR jsonb_typeof(p_metadata) <> 'object' THEN 'metadata must be a JSON object'
        WHEN cardinality(p_dedupe_keys) <> v_n OR cardinality(p_concurrency_keys) <> v_n
            THEN format('dedupe_keys and concurrency_keys need one key per item of args (%s)', v_n)
        WHEN p_dedupe_keys IS NOT NULL
             AND (p_dedupe_scope IS NULL OR p_dedupe_scope NOT IN ('pending', 'active', 'window'))
            THEN 'dedupe_scope must be pending, active or window'
        WHEN p_dedupe_keys IS NOT NULL AND p_dedupe_scope = 'window'
             AND (p_dedupe_window IS NULL OR p_dedupe_window <= interval '0')
            THEN 'dedupe_scope window needs a positive window'
        WHEN p_concurrency_keys IS NOT NULL AND (p_concurrency_limit IS NULL OR p_concurrency_limit < 1)
            THEN 'concurrency_limit must be at least 1'
    END;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'pgqueue: enqueue_bulk: %; nothing was enqueued', v_problem USING ERRCODE = '22023';
    END IF;
    IF p_dedupe_keys IS NOT NULL OR p_concurrency_keys IS NOT NULL THEN
        RETURN QUERY
        SELECT e.id
          FROM pgqueue.enqueue_many(
                   array_fill(p_task, ARRAY[v_n]), p_args, array_fill(p_queue, ARRAY[v_n]),
                   array_fill(p_priority, ARRAY[v_n]), array_fill(p_run_at, ARRAY[v_n]),
                   array_fill(p_max_attempts, ARRAY[v_n]), array_fill(p_timeout, ARRAY[v_n]),
                   array_fill(p_owner, ARRAY[v_n]), array_fill(p_metadata, ARRAY[v_n]), NULL,
                   p_dedupe_keys,
                   CASE WHEN p_dedupe_keys IS NOT NULL THEN array_fill(p_dedupe_scope, ARRAY[v_n]) END,
                   CASE WHEN p_dedupe_keys IS NOT NULL THEN array_fill(p_dedupe_window, ARRAY[v_n]) END,
                   p_concurrency_keys,
                   CASE WHEN p_concurrency_keys IS NOT NULL
                        THEN array_fill(p_concurrency_limit, ARRAY[v_n]) END) AS e(id);
        RETURN;
    END IF;
    SELECT u.ord - 1 INTO v_bad
      FROM unnest(p_args) WITH ORDINALITY AS u(a, ord)
     WHERE u.a IS NULL OR jsonb_typeof(u.a) <> 'object'
     ORDER BY u.ord
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgqueue: enqueue_bulk: item %: args must be a JSON object; nothing was enqueued', v_bad
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner, metadata)
    SELECT p_task, u.a, p_queue, COALESCE(p_priority, 0), COALESCE(p_run_at, now()), p_max_attempts,
           p_timeout, p_owner, p_metadata
      FROM unnest(p_args) WITH ORDINALITY AS u(a, ord)
     ORDER BY u.ord
    RETURNING id;
END $$;

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
-- When no requested queue has a rate limit and no concurrency key has a free
-- slot, the claim runs a third, leaner statement: the plain jobs alone. It
-- takes the same jobs in the same order as the full statement would (whose
-- keyed part would find nothing), without initialising and sorting that empty
-- keyed part on every call (docs/performance.md has the measurements).
-- Which jobs each statement may take is the piece claimable (above). What
-- claiming writes is the same SET block in each of the three statements,
-- written out because a function boundary there made the claim slower;
-- tests/db/test_claim_plan.py fails if the copies differ.
--
-- Its statements run with generic plans (plan_cache_mode), planned once per
-- session: custom plans were planned again on every call, which was about a
-- third of the server's CPU for the claim of one job, as an idle worker makes
-- when a NOTIFY wakes it (docs/performance.md). Sequential and bitmap scans
-- are off, so a plan made while the table was empty (which then looks
-- cheapest read whole) still walks the claim index and the primary key once
-- the backlog is deep. tests/db/test_claim_plan.py and
-- tests/db/test_hot_path_plans.py check both.
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

-- heartbeat: refresh the leases this worker still holds, in one statement.
-- Returns the leases that are still this worker's; `refreshed` is false for a
-- lease whose row another transaction has locked right now (it is skipped, not
-- waited on, so one busy row cannot stall the heartbeat of all the others).
-- A lease missing from the result was lost (rescued, cancelled or timed out)
-- and its task must stop.
-- Planned for each call, as complete_many is (see there).
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

-- progress: record a running job's progress (clamped to 0..100) and message
-- under its lease, and append it to the job's progress history, which keeps
-- the newest p_history_limit reports (0: none). The change is announced on
-- pgqueue_job by the jobs_changed trigger.
CREATE OR REPLACE FUNCTION pgqueue.progress(
    p_id            bigint,
    p_attempt       integer,
    p_pct           numeric,
    p_message       text DEFAULT NULL,
    p_history_limit integer DEFAULT 100
) RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    v_pct smallint;
    v_at  timestamptz;
BEGIN
    IF p_pct IS NULL OR p_pct = 'NaN'::numeric THEN
        RAISE EXCEPTION 'pgqueue: progress: percentage must be a number' USING ERRCODE = '22023';
    END IF;
    IF p_history_limit IS NULL OR p_history_limit < 0 THEN
        RAISE EXCEPTION 'pgqueue: progress: history limit must be 0 or more' USING ERRCODE = '22023';
    END IF;
    UPDATE pgqueue.jobs
       SET progress = LEAST(100, GREATEST(0, round(p_pct)))::smallint,
           progress_message = left(p_message, 1000),
           heartbeat_at = GREATEST(clock_timestamp(), heartbeat_at)
     WHERE id = p_id AND attempts = p_attempt AND status = 'running'
    RETURNING progress, heartbeat_at INTO v_pct, v_at;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_lease_error(p_id, p_attempt, 'report progress of');
    END IF;
    IF p_history_limit > 0 THEN
        INSERT INTO pgqueue.progress_history (job_id, attempt, at, pct, message)
        VALUES (p_id, p_attempt, v_at, v_pct, left(p_message, 1000));
        -- keep the newest p_history_limit rows of this job
        DELETE FROM pgqueue.progress_history h
         WHERE h.job_id = p_id
           AND h.id <= (SELECT k.id FROM pgqueue.progress_history k
                         WHERE k.job_id = p_id
                         ORDER BY k.id DESC OFFSET p_history_limit LIMIT 1);
    END IF;
    RETURN v_pct;
END $$;

-- complete_many: finish many attempts successfully in one statement. Each
-- item is a lease (id, attempt) and the task's JSON result. Returns the
-- leases that were applied; a missing one was stale and its result refused.
-- started_at is filled with COALESCE and completed_at clamped with GREATEST
-- in the same UPDATE, so completed_at >= started_at >= created_at always.
-- Planned for each call's values and the table's current size
-- (force_custom_plan): PL/pgSQL would otherwise keep, for the session, a
-- generic plan made while the table was empty, which reads every job.
-- Sequential and bitmap scans are off and each lease is a lateral
-- primary-key probe, so even a table believed empty (vacuumed or analyzed
-- while empty) is never read whole.
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

-- complete: finish one attempt successfully; raises PQ003 if the lease is stale.
-- complete_many's transition for one lease, as one primary-key UPDATE whose
-- plan is made once per session (complete_many plans its statement for every
-- call, which a single lease does not need: bridges call this once per job).
CREATE OR REPLACE FUNCTION pgqueue.complete(p_id bigint, p_attempt integer, p_result jsonb DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH ts AS (SELECT clock_timestamp() AS now),
    done AS (
        UPDATE pgqueue.jobs j
           SET status = 'completed',
               result = p_result,
               progress = 100,
               started_at = COALESCE(j.started_at, GREATEST(ts.now, j.created_at)),
               completed_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
          FROM ts
         WHERE j.id = p_id AND j.attempts = p_attempt AND j.status = 'running'
        RETURNING j.id, j.attempts, j.worker_id, j.leased_at, j.completed_at
    )
    INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome)
    SELECT done.id, done.attempts, done.worker_id, done.leased_at, done.completed_at, 'completed'
      FROM done;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_lease_error(p_id, p_attempt, 'complete');
    END IF;
END $$;

-- fail: end an attempt badly. The job is retried (status retrying, due after
-- p_retry_in or the default backoff) while attempts remain and the error is
-- retryable; otherwise it ends terminal:
--   timed out on its final attempt                  -> timeout
--   not retryable, or given one attempt             -> failed
--   retryable, given more than one, all used up     -> dead_letter
-- (a job was given max_attempts - released attempts: those handed back by
-- release() are not counted)
-- Returns the job's new status; raises PQ003 if the lease is stale.
CREATE OR REPLACE FUNCTION pgqueue.fail(
    p_id         bigint,
    p_attempt    integer,
    p_error      text,
    p_retryable  boolean DEFAULT true,
    p_timed_out  boolean DEFAULT false,
    p_retry_in   interval DEFAULT NULL
) RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_status pgqueue.job_status;
BEGIN
    IF p_retry_in < interval '0' THEN
        RAISE EXCEPTION 'pgqueue: fail: retry_in must not be negative' USING ERRCODE = '22023';
    END IF;
    IF p_retryable IS NULL OR p_timed_out IS NULL THEN
        RAISE EXCEPTION 'pgqueue: fail: retryable and timed_out must not be null' USING ERRCODE = '22023';
    END IF;
    WITH ts AS (SELECT clock_timestamp() AS now),
    cur AS (
        SELECT j.id,
               CASE
                   WHEN p_retryable AND j.attempts < j.max_attempts THEN 'retrying'
                   WHEN p_timed_out THEN 'timeout'
                   WHEN NOT p_retryable THEN 'failed'
                   -- attempts handed back at shutdown (release) were not
                   -- charged: they do not turn "no retries" into retries
                   WHEN j.max_attempts - j.released <= 1 THEN 'failed'
                   ELSE 'dead_letter'
               END::pgqueue.job_status AS next
          FROM pgqueue.jobs j
         WHERE j.id = p_id AND j.attempts = p_attempt AND j.status = 'running'
           FOR UPDATE
    ),
    ended AS (
        UPDATE pgqueue.jobs j
           SET status = cur.next,
               error = left(p_error, 65536),
               run_at = CASE WHEN cur.next = 'retrying'
                             THEN ts.now + COALESCE(p_retry_in, pgqueue.retry_backoff(j.attempts))
                             ELSE j.run_at END,
               paused = j.executor IS NOT NULL
                        OR (j.batch_id IS NOT NULL AND pgqueue.batch_paused(j.batch_id)),
               completed_at = CASE WHEN cur.next = 'retrying' THEN NULL
                                   ELSE GREATEST(ts.now, j.created_at, j.started_at, j.leased_at) END
          FROM ts, cur
         WHERE j.id = cur.id AND j.attempts = p_attempt AND j.status = 'running'
        RETURNING j.id, j.attempts, j.worker_id, j.leased_at, j.status,
                  GREATEST(ts.now, j.leased_at) AS ended_at
    ),
    history AS (
        INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, error)
        SELECT ended.id, ended.attempts, ended.worker_id, ended.leased_at, ended.ended_at,
               CASE WHEN p_timed_out THEN 'timeout' ELSE 'error' END, left(p_error, 65536)
          FROM ended
    )
    SELECT ended.status INTO v_status FROM ended;
    IF v_status IS NULL THEN
        PERFORM pgqueue.raise_lease_error(p_id, p_attempt, 'fail');
    END IF;
    RETURN v_status;
END $$;

-- release: hand a running job back at worker shutdown, claimable after
-- p_run_in. The interrupted attempt is recorded but not charged: it counts in
-- released, and max_attempts grows by one with it, so the job keeps its full
-- retry budget and the lease numbers stay unique.
CREATE OR REPLACE FUNCTION pgqueue.release(p_id bigint, p_attempt integer, p_run_in interval DEFAULT '0')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_run_in IS NULL OR p_run_in < interval '0' THEN
        RAISE EXCEPTION 'pgqueue: release: run_in must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    WITH ts AS (SELECT clock_timestamp() AS now),
    handed_back AS (
        UPDATE pgqueue.jobs j
           SET status = 'pending', run_at = ts.now + p_run_in,
               max_attempts = j.max_attempts + 1, released = j.released + 1,
               paused = j.batch_id IS NOT NULL AND pgqueue.batch_paused(j.batch_id)
          FROM ts
         WHERE j.id = p_id AND j.attempts = p_attempt AND j.status = 'running'
        RETURNING j.id, j.attempts, j.worker_id, j.leased_at, GREATEST(ts.now, j.leased_at) AS ended_at
    )
    INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, error)
    SELECT id, attempts, worker_id, leased_at, ended_at, 'interrupted', 'worker shut down'
      FROM handed_back;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_lease_error(p_id, p_attempt, 'release');
    END IF;
END $$;

-- A job another executor runs (executor set: a procrastinate job mirrored by
-- the bridge, docs/procrastinate.md) is cancelled and replayed through that
-- executor, whose own tables decide; its bridge then moves the mirror in the
-- same transaction. A bridge is schema pgqueue_<executor> with the functions
-- cancel(bigint) and replay(bigint, integer), each taking the mirror's id.
CREATE OR REPLACE FUNCTION pgqueue.executor_action(
    p_id bigint, p_executor text, p_action text, p_extra_attempts integer DEFAULT NULL
) RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_fn     text := format('%I.%I', 'pgqueue_' || p_executor, p_action);
    v_status pgqueue.job_status;
BEGIN
    IF to_regproc(v_fn) IS NULL THEN
        RAISE EXCEPTION 'pgqueue: cannot % job %: % runs it, and the pgqueue bridge for % is not installed',
            p_action, p_id, p_executor, p_executor USING ERRCODE = 'PQ002';
    END IF;
    IF p_action = 'cancel' THEN
        EXECUTE format('SELECT %s($1)', v_fn) INTO v_status USING p_id;
    ELSE
        EXECUTE format('SELECT %s($1, $2)', v_fn) INTO v_status USING p_id, p_extra_attempts;
    END IF;
    RETURN v_status;
END $$;

-- cancel: operator/user cancel. pending or retrying jobs end at once; a
-- running job ends cancelled too, its lease becomes stale (the worker's late
-- result is refused) and its worker is told through NOTIFY pgqueue_cancel.
CREATE OR REPLACE FUNCTION pgqueue.cancel(p_id bigint)
RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_executor text;
BEGIN
    SELECT executor INTO v_executor FROM pgqueue.jobs WHERE id = p_id;
    IF v_executor IS NOT NULL THEN
        RETURN pgqueue.executor_action(p_id, v_executor, 'cancel');
    END IF;
    RETURN pgqueue.end_cancelled(p_id, 'cancelled while running');
END $$;

-- end_cancelled: the cancel transition itself, for cancel and for bridges
-- (an executor's cancel or abort). p_reason is the running attempt's error.
CREATE OR REPLACE FUNCTION pgqueue.end_cancelled(p_id bigint, p_reason text)
RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_prev pgqueue.job_status;
BEGIN
    WITH ts AS (SELECT clock_timestamp() AS now),
    prev AS (
        SELECT j.id, j.status FROM pgqueue.jobs j WHERE j.id = p_id FOR UPDATE
    ),
    cancelled AS (
        UPDATE pgqueue.jobs j
           SET status = 'cancelled',
               completed_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
          FROM ts, prev
         WHERE j.id = prev.id AND prev.status IN ('pending', 'retrying', 'running')
        RETURNING prev.status AS was, j.id, j.attempts, j.worker_id, j.leased_at, j.completed_at
    ),
    history AS (
        INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, error)
        SELECT id, attempts, worker_id, leased_at, completed_at, 'cancelled', p_reason
          FROM cancelled WHERE was = 'running'
    )
    SELECT was INTO v_prev FROM cancelled;
    IF v_prev IS NULL THEN
        PERFORM pgqueue.raise_state_error(p_id, 'cancel', 'pending, retrying or running');
    END IF;
    RETURN 'cancelled';
END $$;

-- rescue: turn lost leases into retrying (attempts left) or a terminal state.
-- A lease is lost when its heartbeat is older than the lease timeout its
-- holder claimed it with (p_stale_after for rows without one), or when the job
-- has a timeout and has run past timeout + that lease timeout (its worker is
-- alive but did not enforce the limit). One rescuer at a time: the advisory
-- lock is transaction-scoped, so it also works behind a transaction pooler.
CREATE OR REPLACE FUNCTION pgqueue.rescue(p_stale_after interval, p_limit integer DEFAULT 1000)
RETURNS TABLE (id bigint, status pgqueue.job_status) LANGUAGE plpgsql AS $$
BEGIN
    IF p_stale_after IS NULL OR p_stale_after <= interval '0' THEN
        RAISE EXCEPTION 'pgqueue: rescue: stale_after must be positive' USING ERRCODE = '22023';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('pgqueue.rescue')) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH ts AS (SELECT clock_timestamp() AS now),
    lost AS (
        SELECT j.id, o.overdue,
               CASE
                   WHEN j.attempts < j.max_attempts THEN 'retrying'
                   WHEN o.overdue THEN 'timeout'
                   ELSE 'zombie'
               END::pgqueue.job_status AS next,
               CASE WHEN o.overdue
                    THEN format('attempt %s exceeded its timeout of %s on worker %s',
                                j.attempts, j.timeout, j.worker_id)
                    ELSE format('attempt %s lost: worker %s sent no heartbeat since %s',
                                j.attempts, j.worker_id, j.heartbeat_at)
               END AS reason
          FROM pgqueue.jobs j, ts,
               LATERAL (SELECT COALESCE(j.lease_timeout, p_stale_after) AS stale_after) AS l,
               LATERAL (SELECT j.timeout IS NOT NULL
                               AND j.leased_at + j.timeout + l.stale_after < ts.now AS overdue) AS o
         WHERE j.status = 'running' AND j.executor IS NULL
           AND (j.heartbeat_at < ts.now - l.stale_after OR o.overdue)
         ORDER BY j.id
         LIMIT p_limit
           FOR UPDATE OF j SKIP LOCKED
    ),
    rescued AS (
        UPDATE pgqueue.jobs j
           SET status = lost.next,
               error = lost.reason,
               run_at = CASE WHEN lost.next = 'retrying' THEN ts.now ELSE j.run_at END,
               paused = j.batch_id IS NOT NULL AND pgqueue.batch_paused(j.batch_id),
               completed_at = CASE WHEN lost.next = 'retrying' THEN NULL
                                   ELSE GREATEST(ts.now, j.created_at, j.started_at, j.leased_at) END
          FROM lost, ts
         WHERE j.id = lost.id AND j.status = 'running'
        RETURNING j.id, j.status, j.attempts, j.worker_id, j.leased_at, j.error,
                  lost.overdue, GREATEST(ts.now, j.leased_at) AS ended_at
    ),
    history AS (
        INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, error)
        SELECT r.id, r.attempts, r.worker_id, r.leased_at, r.ended_at,
               CASE WHEN r.overdue THEN 'timeout' ELSE 'lost' END, r.error
          FROM rescued r
    )
    SELECT r.id, r.status FROM rescued r;
END $$;

-- replay: operator re-run of a job that ended without success. It becomes
-- pending again with at least p_extra_attempts more attempts (never fewer than
-- it had left); its attempt history and last error are kept, and attempt
-- numbers keep counting (old leases stay stale). A child of a batch that has
-- reached its final state cannot be replayed: the batch finished exactly once.
-- Nor can a unique job while another job of its task holds its dedupe key.
CREATE OR REPLACE FUNCTION pgqueue.replay(p_id bigint, p_extra_attempts integer DEFAULT 1)
RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_batch    pgqueue.batches%ROWTYPE;
    v_executor text;
BEGIN
    IF p_extra_attempts IS NULL OR p_extra_attempts < 1 THEN
        RAISE EXCEPTION 'pgqueue: replay: extra attempts must be at least 1' USING ERRCODE = '22023';
    END IF;
    SELECT executor INTO v_executor FROM pgqueue.jobs WHERE id = p_id;
    IF v_executor IS NOT NULL THEN
        RETURN pgqueue.executor_action(p_id, v_executor, 'replay', p_extra_attempts);
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
    BEGIN
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
    EXCEPTION WHEN unique_violation THEN
        -- back in its dedupe scope, it would hold a key another job holds now
        RAISE EXCEPTION 'pgqueue: cannot replay job %: another job of its task holds its dedupe key %',
            p_id, (SELECT quote_literal(dedupe_key) FROM pgqueue.jobs WHERE id = p_id)
            USING ERRCODE = 'PQ002';
    END;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_state_error(p_id, 'replay', 'failed, timeout, zombie, dead_letter or cancelled');
    END IF;
    RETURN 'pending';
END $$;

-- pause_queue / resume_queue: paused queues are skipped by claim; running
-- jobs finish normally.
CREATE OR REPLACE FUNCTION pgqueue.pause_queue(p_name text)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO pgqueue.queues (name, paused, updated_at) VALUES (p_name, true, clock_timestamp())
    ON CONFLICT (name) DO UPDATE SET paused = true, updated_at = EXCLUDED.updated_at
$$;

CREATE OR REPLACE FUNCTION pgqueue.resume_queue(p_name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.queues (name, paused, updated_at) VALUES (p_name, false, clock_timestamp())
    ON CONFLICT (name) DO UPDATE SET paused = false, updated_at = EXCLUDED.updated_at;
    PERFORM pg_notify('pgqueue_enqueue', p_name);
END $$;

-- set_rate_limit: at most p_limit jobs of queue p_name start in any window of
-- length p_period, across all workers (claim enforces it; docs/scheduling.md).
-- A NULL p_limit removes the limit. Changing a limit keeps the claims already
-- in the window; removing it forgets them.
CREATE OR REPLACE FUNCTION pgqueue.set_rate_limit(p_name text, p_limit integer, p_period interval)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_limit IS NOT NULL AND p_limit < 1 THEN
        RAISE EXCEPTION 'pgqueue: set_rate_limit: limit must be at least 1, not %', p_limit
            USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NOT NULL AND (p_period IS NULL OR p_period <= interval '0') THEN
        RAISE EXCEPTION 'pgqueue: set_rate_limit: period must be a positive interval'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgqueue.queues (name, rate_limit, rate_period, updated_at)
    VALUES (p_name, p_limit, CASE WHEN p_limit IS NOT NULL THEN p_period END, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
       SET rate_limit = EXCLUDED.rate_limit, rate_period = EXCLUDED.rate_period,
           rate_at = CASE WHEN EXCLUDED.rate_limit IS NULL THEN '{}' ELSE queues.rate_at END,
           rate_n = CASE WHEN EXCLUDED.rate_limit IS NULL THEN '{}' ELSE queues.rate_n END,
           updated_at = EXCLUDED.updated_at;
    PERFORM pg_notify('pgqueue_enqueue', p_name);
END $$;

-- rate_wait: seconds until one of p_queues that is out of room in its rate
-- limit can start a job again (the earliest such time); NULL when none of them
-- is held back by its limit. Idle workers sleep this long rather than poll.
CREATE OR REPLACE FUNCTION pgqueue.rate_wait(p_queues text[])
RETURNS double precision LANGUAGE sql STABLE AS $$
    SELECT min(EXTRACT(EPOCH FROM f.frees_at - clock_timestamp()))::float8
      FROM pgqueue.queues s
      CROSS JOIN LATERAL (
          -- the window's claims oldest first; room returns when enough of them
          -- have left it that fewer than rate_limit jobs remain
          SELECT min(w.at + s.rate_period) FILTER (WHERE w.used - w.upto < s.rate_limit) AS frees_at,
                 max(w.used) AS used
            FROM (SELECT x.at, sum(x.n) OVER () AS used,
                         sum(x.n) OVER (ORDER BY x.i ROWS UNBOUNDED PRECEDING) AS upto
                    FROM unnest(s.rate_at, s.rate_n) WITH ORDINALITY AS x(at, n, i)
                   WHERE x.at > clock_timestamp() - s.rate_period) AS w
      ) AS f
     WHERE s.name = ANY(p_queues) AND s.rate_limit IS NOT NULL AND NOT s.paused
       AND f.used >= s.rate_limit
$$;

-- enqueue_batch: create a batch and all its children in one statement, all or
-- nothing: an invalid item raises 22023 naming its index, and nothing is
-- written. The child arrays are those of enqueue_many (every child belongs to
-- p_owner). p_on_complete, if given, is the job enqueued exactly once when
-- the batch finishes by itself (completed or completed_with_errors):
--   {"task": ..., "args": {...}, "queue": ..., "priority": n,
--    "max_attempts": n, "timeout": seconds}
-- and its args get "batch_id" and "batch_status" added. Returns the batch id.
CREATE OR REPLACE FUNCTION pgqueue.enqueue_batch(
    p_tasks          text[],
    p_args           jsonb[],
    p_queues         text[],
    p_priorities     integer[],
    p_run_ats        timestamptz[],
    p_max_attempts   integer[],
    p_timeouts       interval[],
    p_child_metadata jsonb[],
    p_owner          text DEFAULT NULL,
    p_metadata       jsonb DEFAULT '{}',
    p_on_complete    jsonb DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_n  integer := cardinality(p_tasks);
    v_id bigint;
BEGIN
    IF v_n IS NULL OR v_n = 0 THEN
        RAISE EXCEPTION 'pgqueue: enqueue_batch: a batch needs at least one item' USING ERRCODE = '22023';
    END IF;
    -- on_complete is enqueued later, by the child that finishes the batch:
    -- check now everything that could make that insert fail.
    IF p_on_complete IS NOT NULL AND (
           jsonb_typeof(p_on_complete) IS DISTINCT FROM 'object'
           OR jsonb_typeof(p_on_complete -> 'task') IS DISTINCT FROM 'string'
           OR length(p_on_complete ->> 'task') NOT BETWEEN 1 AND 256
           OR COALESCE(jsonb_typeof(p_on_complete -> 'args'), 'object') <> 'object'
           OR (p_on_complete ? 'queue' AND jsonb_typeof(p_on_complete -> 'queue') <> 'null'
               AND (jsonb_typeof(p_on_complete -> 'queue') <> 'string'
                    OR length(p_on_complete ->> 'queue') NOT BETWEEN 1 AND 128))
           OR COALESCE(jsonb_typeof(p_on_complete -> 'priority'), 'null') NOT IN ('null', 'number')
           OR (jsonb_typeof(p_on_complete -> 'priority') = 'number'
               AND (p_on_complete ->> 'priority') !~ '^-?[0-9]{1,9}$')
           OR COALESCE(jsonb_typeof(p_on_complete -> 'max_attempts'), 'null') NOT IN ('null', 'number')
           OR (jsonb_typeof(p_on_complete -> 'max_attempts') = 'number'
               AND ((p_on_complete ->> 'max_attempts') !~ '^[0-9]{1,9}$'
                    OR (p_on_complete ->> 'max_attempts')::integer < 1))
           OR COALESCE(jsonb_typeof(p_on_complete -> 'timeout'), 'null') NOT IN ('null', 'number')
           OR (jsonb_typeof(p_on_complete -> 'timeout') = 'number'
               AND (p_on_complete ->> 'timeout')::numeric <= 0)) THEN
        RAISE EXCEPTION 'pgqueue: enqueue_batch: on_complete must be an object naming a "task" (1 to 256 characters), with object "args", a "queue" of 1 to 128 characters, an integer "priority", "max_attempts" >= 1 and a positive "timeout" in seconds (each optional)'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgqueue.batches (queue, task, total, pending, owner, metadata, on_complete)
    VALUES (COALESCE(p_queues[1], 'default'), COALESCE(p_tasks[1], ''), v_n, v_n, p_owner,
            COALESCE(p_metadata, '{}'), p_on_complete)
    RETURNING id INTO v_id;
    PERFORM pgqueue.enqueue_many(p_tasks, p_args, p_queues, p_priorities, p_run_ats, p_max_attempts,
                                 p_timeouts, array_fill(p_owner, ARRAY[v_n]), p_child_metadata, v_id);
    RETURN v_id;
END $$;

-- Raise the precise error for a batch operation refused by the batch's state.
CREATE OR REPLACE FUNCTION pgqueue.raise_batch_error(p_id bigint, p_action text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_status pgqueue.batch_status;
BEGIN
    SELECT status INTO v_status FROM pgqueue.batches WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: cannot % batch %: it does not exist', p_action, p_id
            USING ERRCODE = 'PQ004';
    END IF;
    RAISE EXCEPTION 'pgqueue: cannot % batch %: it is % (finished)', p_action, p_id, v_status
        USING ERRCODE = 'PQ002';
END $$;

-- Batch counters. batch_apply moves children of batch p_id from the states
-- in p_was to those in p_now (item by item; a NULL in p_now is a deleted
-- child) as increments of its counters, on its row locked by the caller's
-- UPDATE, in the same transaction as the change of the children. The batch's
-- status follows from its counters; a final status (completed_at set) is
-- never left, so a batch finishes exactly once, and that is when its
-- on_complete job is enqueued. p_ids are the moved children: those now
-- pending or retrying get the batch's paused flag as it is once the batch row
-- is locked, so a child that failed while a pause or resume was in flight is
-- neither claimed in a paused batch nor left behind in a resumed one.
-- It plans as PL/pgSQL does by default (plan_cache_mode = auto) whichever
-- function's trigger calls it: claim forces generic plans, complete_many
-- custom ones, for their own statements only.
CREATE OR REPLACE FUNCTION pgqueue.batch_apply(
    p_id  bigint,
    p_was pgqueue.job_status[],
    p_now pgqueue.job_status[],
    p_ids bigint[] DEFAULT NULL
) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = auto AS $$
DECLARE
    d        record;
    b        pgqueue.batches%ROWTYPE;
    v_now    timestamptz := clock_timestamp();
    v_status pgqueue.batch_status;
BEGIN
    SELECT count(*) FILTER (WHERE n IS NULL) AS deleted,
           count(*) FILTER (WHERE n = 'pending') - count(*) FILTER (WHERE w = 'pending') AS pending,
           count(*) FILTER (WHERE n = 'running') - count(*) FILTER (WHERE w = 'running') AS running,
           count(*) FILTER (WHERE n = 'retrying') - count(*) FILTER (WHERE w = 'retrying') AS retrying,
           count(*) FILTER (WHERE n = 'completed') - count(*) FILTER (WHERE w = 'completed') AS completed,
           count(*) FILTER (WHERE n = 'failed') - count(*) FILTER (WHERE w = 'failed') AS failed,
           count(*) FILTER (WHERE n = 'timeout') - count(*) FILTER (WHERE w = 'timeout') AS timeout,
           count(*) FILTER (WHERE n = 'zombie') - count(*) FILTER (WHERE w = 'zombie') AS zombie,
           count(*) FILTER (WHERE n = 'dead_letter') - count(*) FILTER (WHERE w = 'dead_letter') AS dead_letter,
           count(*) FILTER (WHERE n = 'cancelled') - count(*) FILTER (WHERE w = 'cancelled') AS cancelled
      INTO d
      FROM unnest(p_was, p_now) AS m(w, n);

    SELECT * INTO b FROM pgqueue.batches WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_ids IS NOT NULL THEN
        -- rows this statement already changed (and locked): no new lock waits
        UPDATE pgqueue.jobs SET paused = b.paused
         WHERE id = ANY(p_ids) AND status IN ('pending', 'retrying') AND paused <> b.paused
           AND executor IS NULL;
    END IF;
    b.total := b.total - d.deleted;
    b.pending := b.pending + d.pending;
    b.running := b.running + d.running;
    b.retrying := b.retrying + d.retrying;
    b.completed := b.completed + d.completed;
    b.failed := b.failed + d.failed;
    b.timeout := b.timeout + d.timeout;
    b.zombie := b.zombie + d.zombie;
    b.dead_letter := b.dead_letter + d.dead_letter;
    b.cancelled := b.cancelled + d.cancelled;
    v_status := CASE
        WHEN b.completed_at IS NOT NULL THEN b.status
        WHEN b.pending + b.running + b.retrying = 0 THEN
            (CASE WHEN b.completed = b.total THEN 'completed'
                  ELSE 'completed_with_errors' END)::pgqueue.batch_status
        WHEN b.paused THEN 'paused'
        WHEN b.pending = b.total THEN 'pending'
        ELSE 'running'
    END;
    IF b.started_at IS NULL AND b.pending < b.total THEN
        b.started_at := GREATEST(v_now, b.created_at);
    END IF;
    IF b.completed_at IS NULL AND v_status IN ('completed', 'completed_with_errors') THEN
        b.completed_at := GREATEST(v_now, b.created_at, b.started_at);
        IF b.on_complete IS NOT NULL THEN
            INSERT INTO pgqueue.jobs (task, args, queue, priority, max_attempts, timeout, owner)
            VALUES (b.on_complete ->> 'task',
                    COALESCE(b.on_complete -> 'args', '{}')
                        || jsonb_build_object('batch_id', b.id, 'batch_status', v_status),
                    COALESCE(b.on_complete ->> 'queue', b.queue),
                    COALESCE((b.on_complete ->> 'priority')::integer, 0),
                    COALESCE((b.on_complete ->> 'max_attempts')::integer, 1),
                    make_interval(secs => (b.on_complete ->> 'timeout')::float8),
                    b.owner)
            RETURNING id INTO b.on_complete_job_id;
        END IF;
    END IF;
    UPDATE pgqueue.batches
       SET total = b.total, pending = b.pending, running = b.running, retrying = b.retrying,
           completed = b.completed, failed = b.failed, timeout = b.timeout, zombie = b.zombie,
           dead_letter = b.dead_letter, cancelled = b.cancelled, status = v_status,
           started_at = b.started_at, completed_at = b.completed_at,
           on_complete_job_id = b.on_complete_job_id
     WHERE id = b.id;
    IF v_status <> b.status THEN
        PERFORM pg_notify('pgqueue_batch', json_build_object(
            'id', b.id, 'status', v_status, 'owner', b.owner)::text);
    END IF;
END $$;

-- Runs once per UPDATE statement on jobs, with the statement's old and new
-- rows. It announces each job whose state or progress changed on
-- pgqueue_job (and a running job's cancel on pgqueue_cancel; a job pending
-- again, or a keyed job leaving running, whose slot another job of its key
-- may now take, on pgqueue_enqueue), then applies batch children's moves batch by
-- batch in id order (so concurrent statements lock batch rows in the same
-- order and never deadlock on them). One statement-level trigger instead of a
-- row trigger per job: a claim or completion of 100 jobs runs it once. The
-- JSON payload is spelled out with concat and to_json (which escapes text as
-- json_build_object does), cheaper than json_build_object, which resolves its
-- arguments' types on every call.
CREATE OR REPLACE FUNCTION pgqueue.jobs_changed()
RETURNS trigger LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d record;
BEGIN
    PERFORM pg_notify('pgqueue_job', concat(
                '{"id":', n.id, ',"status":"', n.status, '","progress":', n.progress,
                ',"queue":', to_json(n.queue),
                ',"owner":', COALESCE(to_json(n.owner)::text, 'null'),
                ',"batch_id":', COALESCE(n.batch_id::text, 'null'),
                ',"message":', COALESCE(to_json(left(n.progress_message, 200))::text, 'null'),
                '}')),
            CASE WHEN n.status = 'cancelled' AND o.status = 'running'
                 THEN pg_notify('pgqueue_cancel', n.id::text) END,
            CASE WHEN (n.status = 'pending' AND o.status <> 'pending')
                   OR (o.status = 'running' AND n.status <> 'running'
                       AND n.concurrency_key IS NOT NULL)
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

-- pause_batch: its pending and retrying children are not claimed until
-- resume_batch; running children finish normally. Children are flagged
-- before the batch row is locked: the order in which workers' statements
-- lock them, so the two never deadlock.
CREATE OR REPLACE FUNCTION pgqueue.pause_batch(p_id bigint)
RETURNS pgqueue.batch_status LANGUAGE plpgsql AS $$
DECLARE
    v_status pgqueue.batch_status;
BEGIN
    IF EXISTS (SELECT 1 FROM pgqueue.jobs WHERE batch_id = p_id AND executor IS NOT NULL) THEN
        RAISE EXCEPTION 'pgqueue: cannot pause batch %: its jobs are run by %, which pgqueue cannot hold back (cancel the batch instead)',
            p_id, (SELECT j.executor FROM pgqueue.jobs j
                    WHERE j.batch_id = p_id AND j.executor IS NOT NULL LIMIT 1)
            USING ERRCODE = 'PQ002';
    END IF;
    PERFORM 1 FROM pgqueue.jobs
     WHERE batch_id = p_id AND status IN ('pending', 'retrying') AND NOT paused
     ORDER BY id
       FOR UPDATE;
    UPDATE pgqueue.jobs SET paused = true
     WHERE batch_id = p_id AND status IN ('pending', 'retrying') AND NOT paused;
    UPDATE pgqueue.batches SET paused = true, status = 'paused'
     WHERE id = p_id AND completed_at IS NULL
    RETURNING status INTO v_status;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_batch_error(p_id, 'pause');
    END IF;
    PERFORM pg_notify('pgqueue_batch', json_build_object(
        'id', b.id, 'status', b.status, 'owner', b.owner)::text)
       FROM pgqueue.batches b WHERE b.id = p_id;
    RETURN v_status;
END $$;

-- resume_batch: let a paused batch's children be claimed again. Like
-- pause_batch and cancel_batch it locks the children in id order first.
CREATE OR REPLACE FUNCTION pgqueue.resume_batch(p_id bigint)
RETURNS pgqueue.batch_status LANGUAGE plpgsql AS $$
DECLARE
    v_status pgqueue.batch_status;
    v_queue  text;
BEGIN
    PERFORM 1 FROM pgqueue.jobs WHERE batch_id = p_id AND paused AND executor IS NULL
     ORDER BY id FOR UPDATE;
    UPDATE pgqueue.jobs SET paused = false WHERE batch_id = p_id AND paused AND executor IS NULL;
    UPDATE pgqueue.batches
       SET paused = false,
           status = CASE WHEN pending = total THEN 'pending' ELSE 'running' END::pgqueue.batch_status
     WHERE id = p_id AND completed_at IS NULL
    RETURNING status, queue INTO v_status, v_queue;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_batch_error(p_id, 'resume');
    END IF;
    PERFORM pg_notify('pgqueue_enqueue', v_queue);
    PERFORM pg_notify('pgqueue_batch', json_build_object(
        'id', b.id, 'status', b.status, 'owner', b.owner)::text)
       FROM pgqueue.batches b WHERE b.id = p_id;
    RETURN v_status;
END $$;

-- cancel_batch: the batch ends cancelled; its pending and retrying children
-- end cancelled, and running ones too (their leases become stale and their
-- workers are told through pgqueue_cancel, as with cancel). Its on_complete
-- job is not enqueued. Lock order: active children (id order), then the batch.
CREATE OR REPLACE FUNCTION pgqueue.cancel_batch(p_id bigint)
RETURNS pgqueue.batch_status LANGUAGE plpgsql AS $$
DECLARE
    v_child  record;
    v_mirror boolean := false;
BEGIN
    -- Children another executor runs are cancelled through it first, each
    -- locking its executor's row, then the mirror, then the batch: the order
    -- of that executor's own statements. If that finishes the batch, it is
    -- still this cancel that ends it.
    IF NOT EXISTS (SELECT 1 FROM pgqueue.batches WHERE id = p_id AND completed_at IS NULL) THEN
        PERFORM pgqueue.raise_batch_error(p_id, 'cancel');
    END IF;
    FOR v_child IN
        SELECT j.id, j.executor FROM pgqueue.jobs j
         WHERE j.batch_id = p_id AND j.executor IS NOT NULL
           AND j.status IN ('pending', 'retrying', 'running')
         ORDER BY j.id
    LOOP
        PERFORM pgqueue.executor_action(v_child.id, v_child.executor, 'cancel');
        v_mirror := true;
    END LOOP;
    PERFORM 1 FROM pgqueue.jobs
     WHERE batch_id = p_id AND status IN ('pending', 'retrying', 'running')
     ORDER BY id
       FOR UPDATE;
    UPDATE pgqueue.batches
       SET status = 'cancelled', paused = false,
           started_at = COALESCE(started_at, GREATEST(clock_timestamp(), created_at)),
           completed_at = COALESCE(CASE WHEN v_mirror THEN completed_at END,
                                   GREATEST(clock_timestamp(), created_at, started_at))
     WHERE id = p_id AND (completed_at IS NULL OR v_mirror);
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_batch_error(p_id, 'cancel');
    END IF;
    WITH ts AS (SELECT clock_timestamp() AS now),
    prev AS (
        SELECT j.id, j.status FROM pgqueue.jobs j
         WHERE j.batch_id = p_id AND j.status IN ('pending', 'retrying', 'running')
           FOR UPDATE
    ),
    cancelled AS (
        UPDATE pgqueue.jobs j
           SET status = 'cancelled',
               completed_at = GREATEST(ts.now, j.created_at, j.started_at, j.leased_at)
          FROM ts, prev
         WHERE j.id = prev.id
        RETURNING prev.status AS was, j.id, j.attempts, j.worker_id, j.leased_at, j.completed_at
    )
    INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, error)
    SELECT id, attempts, worker_id, leased_at, completed_at, 'cancelled', 'batch cancelled while running'
      FROM cancelled WHERE was = 'running';
    PERFORM pg_notify('pgqueue_batch', json_build_object(
        'id', b.id, 'status', b.status, 'owner', b.owner)::text)
       FROM pgqueue.batches b WHERE b.id = p_id;
    RETURN 'cancelled';
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
-- It also deletes periodic ticks older than p_ticks_after (not counted).
CREATE OR REPLACE FUNCTION pgqueue.prune(
    p_completed_after interval,
    p_failed_after    interval,
    p_limit           integer DEFAULT 1000,
    p_ticks_after     interval DEFAULT '7 days'
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
    IF p_ticks_after IS NULL OR p_ticks_after < interval '0' THEN
        RAISE EXCEPTION 'pgqueue: prune: ages must be non-negative intervals' USING ERRCODE = '22023';
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

    -- Periodic ticks older than p_ticks_after, but never a schedule's latest:
    -- the scheduler counts missed ticks from it.
    DELETE FROM pgqueue.periodic_ticks t
     WHERE (t.name, t.tick) IN (
            SELECT o.name, o.tick
              FROM pgqueue.periodic_ticks o
             WHERE o.tick < v_now - p_ticks_after
               AND EXISTS (SELECT 1 FROM pgqueue.periodic_ticks n
                            WHERE n.name = o.name AND n.tick > o.tick)
             LIMIT p_limit);
    RETURN v_deleted;
END $$;

-- enqueue_tick: enqueue the job of tick p_tick of periodic schedule p_name,
-- exactly once however many workers call it: the tick's row in
-- periodic_ticks (primary key name, tick) and its job are written in the same
-- transaction, and a tick already recorded (by another worker, or earlier)
-- returns NULL without a job. With p_enqueue = false the tick is only
-- recorded, as the starting point of a new schedule. A tick later than the
-- database's clock is refused: the database clock decides what is due, never
-- a worker's. The job's metadata names the schedule and the tick.
CREATE OR REPLACE FUNCTION pgqueue.enqueue_tick(
    p_name         text,
    p_tick         timestamptz,
    p_task         text,
    p_args         jsonb DEFAULT '{}',
    p_queue        text DEFAULT 'default',
    p_priority     integer DEFAULT 0,
    p_max_attempts integer DEFAULT 1,
    p_timeout      interval DEFAULT NULL,
    p_enqueue      boolean DEFAULT true
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_tick IS NULL OR p_tick > clock_timestamp() THEN
        RAISE EXCEPTION 'pgqueue: enqueue_tick: tick % of % is not due yet (database time %)',
            p_tick, p_name, clock_timestamp() USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgqueue.periodic_ticks (name, tick) VALUES (p_name, p_tick)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND OR NOT p_enqueue THEN
        RETURN NULL;
    END IF;
    INSERT INTO pgqueue.jobs (task, args, queue, priority, max_attempts, timeout, metadata)
    VALUES (p_task, COALESCE(p_args, '{}'), COALESCE(p_queue, 'default'), COALESCE(p_priority, 0),
            COALESCE(p_max_attempts, 1), p_timeout,
            jsonb_build_object('periodic', p_name, 'tick', p_tick))
    RETURNING id INTO v_id;
    UPDATE pgqueue.periodic_ticks SET job_id = v_id WHERE name = p_name AND tick = p_tick;
    RETURN v_id;
END $$;

-- Announcements (sent by notify_enqueued below and by jobs_changed above).
-- Channel pgqueue_enqueue (payload: queue name) wakes idle
-- workers; pgqueue_job (payload: JSON id, status, progress, queue, owner,
-- batch_id, message) reports every state or progress change; pgqueue_cancel
-- (payload: job id) tells a worker that one of its running jobs was
-- cancelled; pgqueue_batch (payload: JSON id, status, owner) reports every
-- change of a batch's status.
CREATE OR REPLACE FUNCTION pgqueue.notify_enqueued()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue_enqueue', q.queue)
       FROM (SELECT DISTINCT n.queue FROM new_jobs n
              WHERE n.run_at <= now() AND n.executor IS NULL) AS q;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_enqueued
    AFTER INSERT ON pgqueue.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_enqueued();
