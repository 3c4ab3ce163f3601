-- pgqueue revision 0009: lighter bulk enqueues and job announcements.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- * enqueue_bulk: many jobs of one task sharing their options, all or
--   nothing. The library's enqueue_many sends its items' arguments and one
--   copy of the options, where enqueue_many takes every option per item.
-- * jobs_changed builds the pgqueue_job payload with concat and to_json
--   instead of json_build_object: the same JSON values, in compact text.

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

-- Runs once per UPDATE statement on jobs, with the statement's old and new
-- rows. It announces each job whose state or progress changed on
-- pgqueue_job (and a running job's cancel on pgqueue_cancel, a job pending
-- again on pgqueue_enqueue), then applies batch children's moves batch by
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

