-- pgqueue revision 0005, downgrade: back to revision 0004's functions.
-- Frozen with 0005_concurrency.sql. Jobs lose their concurrency keys (the
-- jobs stay, and are claimed without a limit).

DROP FUNCTION pgqueue.enqueue(text, jsonb, text, integer, timestamptz, integer, interval, text, jsonb,
                              text, text, interval, text, integer);
DROP FUNCTION pgqueue.enqueue_many(text[], jsonb[], text[], integer[], timestamptz[], integer[],
                                   interval[], text[], jsonb[], bigint, text[], text[], interval[],
                                   text[], integer[]);
DROP INDEX pgqueue.jobs_running_key_idx;
DROP INDEX pgqueue.jobs_claim_keyed_idx;
DROP INDEX pgqueue.jobs_claim_idx;
ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_concurrency_valid;
ALTER TABLE pgqueue.jobs DROP COLUMN concurrency_limit;
ALTER TABLE pgqueue.jobs DROP COLUMN concurrency_key;

-- The claim: per queue, highest priority first, then oldest run_at, then id.
-- Partial, so finished jobs (the bulk of a busy table) cost it nothing.
CREATE INDEX jobs_claim_idx ON pgqueue.jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND NOT paused;

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
    p_dedupe_window interval DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_dedupe_key IS NULL THEN
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
               ARRAY[p_dedupe_key], ARRAY[p_dedupe_scope], ARRAY[p_dedupe_window]) AS e(id);
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
    p_dedupe_windows interval[] DEFAULT NULL
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
                OR cardinality(p_dedupe_windows) IS DISTINCT FROM v_n)) THEN
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
               ELSE 'dedupe_scope window needs a READ COMMITTED transaction'
           END AS problem
      INTO v_bad
      FROM unnest(p_tasks, p_args, p_queues, p_max_attempts, p_timeouts, p_metadata,
                  p_dedupe_keys, p_dedupe_scopes, p_dedupe_windows)
           WITH ORDINALITY AS u(t, a, q, m, tm, md, dk, ds, dw, ord)
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
                                  metadata, batch_id)
        SELECT t, a, q, COALESCE(p, 0), COALESCE(r, now()), m, tm, o, md, p_batch_id
          FROM unnest(p_tasks, p_args, p_queues, p_priorities, p_run_ats, p_max_attempts,
                      p_timeouts, p_owners, p_metadata)
               WITH ORDINALITY AS u(t, a, q, p, r, m, tm, o, md, ord)
         ORDER BY ord
        RETURNING id;
        RETURN;
    END IF;

    -- The items without a key: one INSERT; identity values follow item order.
    WITH plain AS (
        INSERT INTO pgqueue.jobs (task, args, queue, priority, run_at, max_attempts, timeout, owner,
                                  metadata)
        SELECT t, a, q, COALESCE(p, 0), COALESCE(r, now()), m, tm, o, md
          FROM unnest(p_tasks, p_args, p_queues, p_priorities, p_run_ats, p_max_attempts,
                      p_timeouts, p_owners, p_metadata, p_dedupe_keys)
               WITH ORDINALITY AS u(t, a, q, p, r, m, tm, o, md, dk, ord)
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
                                      owner, metadata, dedupe_key, dedupe_scope)
            SELECT g.t, p_args[g.f], p_queues[g.f], COALESCE(p_priorities[g.f], 0),
                   COALESCE(p_run_ats[g.f], now()), p_max_attempts[g.f], p_timeouts[g.f],
                   p_owners[g.f], p_metadata[g.f], g.k, g.s
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

-- claim: lease up to p_limit due jobs from p_queues (paused queues and
-- children of paused batches skipped),
-- highest priority first, then oldest run_at, then id. Each claimed job
-- becomes running under a new lease (attempts + 1) that stays valid while its
-- heartbeat is younger than p_lease_timeout. With p_tasks, only jobs of those
-- tasks are claimed, so a worker never takes a job it cannot run (e.g. during a
-- rolling deploy). Never returns more than p_limit rows; rows locked by
-- concurrent claimers are skipped, not waited on.
CREATE OR REPLACE FUNCTION pgqueue.claim(
    p_worker_id     text,
    p_queues        text[],
    p_limit         integer,
    p_lease_timeout interval DEFAULT '20 seconds',
    p_tasks         text[] DEFAULT NULL
) RETURNS SETOF pgqueue.jobs LANGUAGE plpgsql AS $$
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

    RETURN QUERY
    WITH ts AS (SELECT clock_timestamp() AS now),
    active AS (
        SELECT DISTINCT q.name
          FROM unnest(p_queues) AS q(name)
         WHERE NOT EXISTS (SELECT 1 FROM pgqueue.queues s WHERE s.name = q.name AND s.paused)
    ),
    candidates AS (
        SELECT c.id
          FROM active
          CROSS JOIN LATERAL (
              SELECT j.id, j.priority, j.run_at
                FROM pgqueue.jobs j
               WHERE j.queue = active.name
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
      FROM candidates, ts
     WHERE j.id = candidates.id
    RETURNING j.*;
END $$;
