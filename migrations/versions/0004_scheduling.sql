-- pgqueue revision 0004: unique jobs (dedupe keys) and periodic tasks.
-- Frozen: never edited once released; later changes go in a new revision.

ALTER TABLE pgqueue.jobs ADD COLUMN dedupe_key text;    -- unique jobs: the key, per task
ALTER TABLE pgqueue.jobs ADD COLUMN dedupe_scope text;  -- ... and how long the job holds it
-- pending: until the job first starts; active: until it finishes;
-- window: the enqueuer checks jobs created within its window (no index can)
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_dedupe_valid CHECK (
    (dedupe_key IS NULL) = (dedupe_scope IS NULL)
    AND length(dedupe_key) BETWEEN 1 AND 512
    AND dedupe_scope IN ('pending', 'active', 'window'));

-- Unique jobs. A job holds its (task, dedupe_key) while it is in its scope;
-- this index lets one holder exist at a time, so a duplicate enqueue
-- (INSERT ... ON CONFLICT DO NOTHING) finds the holder instead. Only replay
-- can move a job back into its scope; it refuses while another job holds the key.
CREATE UNIQUE INDEX jobs_dedupe_held_idx ON pgqueue.jobs (task, dedupe_key)
    WHERE dedupe_key IS NOT NULL
      AND ((dedupe_scope = 'pending' AND status = 'pending' AND attempts = 0)
           OR (dedupe_scope = 'active' AND status IN ('pending', 'retrying', 'running')));

-- Window-scoped unique jobs: the newest job of a key, by creation time.
CREATE INDEX jobs_dedupe_created_idx ON pgqueue.jobs (task, dedupe_key, created_at)
    WHERE dedupe_key IS NOT NULL;

-- Periodic tasks: one row per schedule and tick that was enqueued (or, with
-- job_id NULL, recorded as the starting point of a new schedule). The primary
-- key makes each tick happen once however many workers schedule it. job_id
-- is not a foreign key: retention removes jobs and ticks independently.
CREATE TABLE pgqueue.periodic_ticks (
    name         text NOT NULL,
    tick         timestamptz NOT NULL,
    job_id       bigint,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (name, tick),
    CONSTRAINT periodic_ticks_name_valid CHECK (name <> '' AND length(name) <= 256)
);

-- New signatures: the old ones go first, so no call is ambiguous.
DROP FUNCTION pgqueue.enqueue(text, jsonb, text, integer, timestamptz, integer, interval, text, jsonb);
DROP FUNCTION pgqueue.enqueue_many(text[], jsonb[], text[], integer[], timestamptz[], integer[],
                                   interval[], text[], jsonb[], bigint);
DROP FUNCTION pgqueue.prune(interval, interval, integer);

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

-- replay: operator re-run of a job that ended without success. It becomes
-- pending again with at least p_extra_attempts more attempts (never fewer than
-- it had left); its attempt history and last error are kept, and attempt
-- numbers keep counting (old leases stay stale). A child of a batch that has
-- reached its final state cannot be replayed: the batch finished exactly once.
-- Nor can a unique job while another job of its task holds its dedupe key.
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
