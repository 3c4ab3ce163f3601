-- The procrastinate bridge (docs/procrastinate.md): a mirror row in
-- pgqueue.jobs for every procrastinate job, created and moved by triggers on
-- procrastinate_jobs inside procrastinate's own statements, through pgqueue's
-- guarded transitions. pgqueue's API, events, batches, progress history,
-- metrics and dashboard then cover procrastinate's jobs; pgqueue never claims
-- or rescues a mirror (revision 0013), and cancels and replays one through
-- procrastinate's own functions.
--
-- Installed by `pgqueue procrastinate install`, after `procrastinate schema
-- --apply` and pgqueue's migrations. Idempotent: every object is replaced,
-- and procrastinate jobs without a mirror get one. Removed by
-- procrastinate_uninstall.sql; procrastinate itself is never altered beyond
-- the three triggers.
--
-- The triggers never raise into procrastinate's fetch, finish, retry or
-- cancel: an error there would stop `procrastinate worker` and leave its
-- job stuck. They catch it, record it in pgqueue_procrastinate.errors and
-- raise a WARNING; the next change of that job mirrors its state afresh.
-- Only a defer that named an owner or batch (pgqueue.procrastinate.defer)
-- fails on bad input, inside the caller's transaction.

DO $$
BEGIN
    IF to_regclass('procrastinate_jobs') IS NULL THEN
        RAISE EXCEPTION 'pgqueue: the procrastinate bridge needs procrastinate''s schema: run `procrastinate schema --apply` first'
            USING ERRCODE = '55000';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                    WHERE table_schema = 'pgqueue' AND table_name = 'jobs'
                      AND column_name = 'executor') THEN
        RAISE EXCEPTION 'pgqueue: the procrastinate bridge needs pgqueue schema revision 0013 or later: run `pgqueue migrate` first'
            USING ERRCODE = '55000';
    END IF;
END $$;

CREATE SCHEMA IF NOT EXISTS pgqueue_procrastinate;

-- The outcome of a running job's attempt, recorded by the worker middleware
-- just before procrastinate ends the attempt (its return value, or its
-- error). The trigger reads and deletes it in the transaction that ends the
-- attempt, so the mirror's result and procrastinate's status are written
-- together or not at all, whenever the worker dies.
CREATE TABLE IF NOT EXISTS pgqueue_procrastinate.outcomes (
    job_id    bigint PRIMARY KEY,
    worker_id bigint,
    result    jsonb,
    error     text,
    staged_at timestamptz NOT NULL DEFAULT now()
);

-- What the triggers caught instead of raising into procrastinate.
CREATE TABLE IF NOT EXISTS pgqueue_procrastinate.errors (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    job_id    bigint,
    operation text NOT NULL,
    sqlstate  text NOT NULL,
    message   text NOT NULL
);

CREATE OR REPLACE FUNCTION pgqueue_procrastinate.installed_version()
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1 $$;

-- The lease holder a mirror names: procrastinate's worker.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.holder(p_worker bigint)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'procrastinate:' || COALESCE(p_worker::text, 'unknown')
$$;

CREATE OR REPLACE FUNCTION pgqueue_procrastinate.caught(
    p_job bigint, p_operation text, p_sqlstate text, p_message text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue_procrastinate.errors (job_id, operation, sqlstate, message)
    VALUES (p_job, p_operation, p_sqlstate, left(p_message, 2000));
    RAISE WARNING 'pgqueue procrastinate bridge: % of procrastinate job % not mirrored: % (SQLSTATE %)',
        p_operation, p_job, p_message, p_sqlstate;
END $$;

-- Mirrors for the procrastinate jobs p_ids that have none, each in the state
-- its job is in now.
-- Its statement is planned once per session (generic plan): planned again
-- for each defer, it cost more than the insert.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.add_mirrors(
    p_ids bigint[], p_owner text, p_batch bigint
) RETURNS integer LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_n   integer;
BEGIN
    INSERT INTO pgqueue.jobs (queue, task, args, priority, run_at, status, attempts,
                              max_attempts, started_at, leased_at, heartbeat_at, worker_id,
                              completed_at, owner, batch_id, metadata, paused, executor,
                              external_id)
    SELECT p.queue_name, p.task_name,
           CASE WHEN jsonb_typeof(p.args) = 'object' THEN p.args
                ELSE jsonb_build_object('args', p.args) END,
           p.priority, COALESCE(p.scheduled_at, v_now), s.status, s.attempts,
           GREATEST(s.attempts, 1),
           CASE WHEN s.status <> 'pending' AND s.attempts > 0 THEN v_now END,
           CASE WHEN s.status <> 'pending' AND s.attempts > 0 THEN v_now END,
           CASE WHEN s.status = 'running' THEN v_now END,
           CASE WHEN s.status = 'running' THEN pgqueue_procrastinate.holder(p.worker_id) END,
           CASE WHEN s.status NOT IN ('pending', 'running') THEN v_now END,
           p_owner, p_batch,
           CASE WHEN p.lock IS NULL AND p.queueing_lock IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('procrastinate', jsonb_strip_nulls(jsonb_build_object(
                         'lock', p.lock, 'queueing_lock', p.queueing_lock))) END,
           true, 'procrastinate', p.id
      FROM procrastinate_jobs p,
           LATERAL (SELECT (CASE p.status::text
                                WHEN 'todo' THEN 'pending'
                                WHEN 'doing' THEN 'running'
                                WHEN 'succeeded' THEN 'completed'
                                WHEN 'failed' THEN 'failed'
                                ELSE 'cancelled'
                            END)::pgqueue.job_status AS status,
                           CASE WHEN p.status::text = 'doing' THEN 1
                                WHEN p.status::text IN ('succeeded', 'failed') THEN 1
                                ELSE 0 END AS attempts) AS s
     WHERE p.id = ANY (p_ids)
       -- (a mirror's id is not drawn for a job that has one)
       AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs j
                        WHERE j.executor = 'procrastinate' AND j.external_id = p.id)
       -- the bridge's own recovery pass (a periodic procrastinate task) is
       -- housekeeping, not a job anyone follows
       AND p.task_name <> 'pgqueue.recover_stalled'
     ORDER BY p.id
    ON CONFLICT (executor, external_id) WHERE executor IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF p_batch IS NOT NULL AND v_n > 0 THEN
        -- the new children are pending (procrastinate defers into todo)
        UPDATE pgqueue.batches SET total = total + v_n, pending = pending + v_n
         WHERE id = p_batch;
    END IF;
    RETURN v_n;
END $$;

-- After each INSERT statement on procrastinate_jobs (every way of deferring:
-- task.defer, batch defers, the CLI, periodic defers, Django's admin).
-- pgqueue.procrastinate.defer names an owner and a batch in two
-- transaction-local settings; they are reset after each defer.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.jobs_inserted()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_owner text := NULLIF(current_setting('pgqueue_procrastinate.owner', true), '');
    v_batch text := NULLIF(current_setting('pgqueue_procrastinate.batch', true), '');
    v_ids   bigint[];
    v_id    bigint;
BEGIN
    SELECT array_agg(n.id) INTO v_ids FROM new_rows n;
    IF v_owner IS NULL AND v_batch IS NULL THEN
        BEGIN
            PERFORM pgqueue_procrastinate.add_mirrors(v_ids, NULL, NULL);
        EXCEPTION WHEN OTHERS THEN
            PERFORM pgqueue_procrastinate.caught(v_ids[1], 'defer', SQLSTATE, SQLERRM);
        END;
        RETURN NULL;
    END IF;
    -- A defer that asked for an owner or a batch fails on a bad one, in the
    -- caller's transaction: nothing of it is kept.
    IF length(v_owner) > 256 THEN
        RAISE EXCEPTION 'pgqueue: owner must be 1 to 256 characters' USING ERRCODE = '22023';
    END IF;
    IF v_batch IS NOT NULL THEN
        IF v_batch !~ '^[0-9]{1,18}$' THEN
            RAISE EXCEPTION 'pgqueue: batch must be a batch id, not %', quote_literal(v_batch)
                USING ERRCODE = '22023';
        END IF;
        v_id := v_batch::bigint;
        SELECT COALESCE(v_owner, b.owner) INTO v_owner
          FROM pgqueue.batches b WHERE b.id = v_id AND b.completed_at IS NULL
           FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgqueue: cannot add jobs to batch %: it does not exist or has finished', v_id
                USING ERRCODE = 'PQ004';
        END IF;
    END IF;
    PERFORM pgqueue_procrastinate.add_mirrors(v_ids, v_owner, v_id);
    RETURN NULL;
END $$;

-- After each change of a procrastinate job's status or abort request, and
-- after its deletion: the matching transition of its mirror.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.job_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM pgqueue_procrastinate.apply(
            OLD.id, OLD.status::text, OLD.worker_id,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.status::text END,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.abort_requested AND NOT OLD.abort_requested
                 ELSE false END,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.worker_id END,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.scheduled_at END,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.queue_name END,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.priority END);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgqueue_procrastinate.caught(
            OLD.id, lower(TG_OP) || ' ' || OLD.status::text || ' -> '
                    || COALESCE(CASE WHEN TG_OP = 'UPDATE' THEN NEW.status::text END, 'deleted'),
            SQLSTATE, SQLERRM);
    END;
    RETURN NULL;
END $$;

-- The mirror's transition for procrastinate job p_job moving from p_was to
-- p_now (NULL: deleted). Each step names the mirror states it may leave, as
-- pgqueue's own transitions do, so a repeated or late change does nothing.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.apply(
    p_job         bigint,
    p_was         text,
    p_was_worker  bigint,
    p_now         text,
    p_abort       boolean,
    p_worker      bigint,
    p_scheduled   timestamptz,
    p_queue       text,
    p_priority    integer
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m       pgqueue.jobs%ROWTYPE;
    v_out   pgqueue_procrastinate.outcomes%ROWTYPE;
    v_ts    timestamptz := clock_timestamp();
    v_ended boolean := p_was = 'doing' AND p_now IS DISTINCT FROM 'doing';
BEGIN
    SELECT * INTO m FROM pgqueue.jobs j
     WHERE j.executor = 'procrastinate' AND j.external_id = p_job
       FOR UPDATE;
    IF v_ended THEN
        -- the outcome the middleware recorded for this attempt (another
        -- worker's, from an attempt taken away from it, is not this one's)
        DELETE FROM pgqueue_procrastinate.outcomes o WHERE o.job_id = p_job
        RETURNING o.* INTO v_out;
        IF v_out.worker_id IS DISTINCT FROM p_was_worker THEN
            v_out := NULL;
        END IF;
    END IF;
    IF m.id IS NULL THEN
        -- no mirror (a job deferred before the bridge was installed, or whose
        -- mirror could not be written, or was pruned): mirror it as it is now
        IF p_now IS NOT NULL THEN
            PERFORM pgqueue_procrastinate.add_mirrors(ARRAY[p_job], NULL, NULL);
        END IF;
        RETURN;
    END IF;

    -- an attempt starts: fetched by a worker (or ending one whose start the
    -- mirror missed)
    IF (p_was = 'todo' AND p_now = 'doing') OR (v_ended AND m.status IN ('pending', 'retrying')) THEN
        UPDATE pgqueue.jobs j
           SET status = 'running',
               attempts = j.attempts + 1,
               max_attempts = GREATEST(j.max_attempts, j.attempts + 1),
               worker_id = pgqueue_procrastinate.holder(COALESCE(p_worker, p_was_worker)),
               started_at = COALESCE(j.started_at, GREATEST(v_ts, j.created_at)),
               leased_at = GREATEST(v_ts, j.created_at, j.started_at),
               heartbeat_at = GREATEST(v_ts, j.created_at, j.started_at),
               progress = 0,
               progress_message = NULL
         WHERE j.id = m.id AND j.status IN ('pending', 'retrying')
        RETURNING j.* INTO m;
        IF NOT v_ended THEN
            RETURN;
        END IF;
    END IF;

    IF p_abort AND p_now = 'doing' THEN
        -- an abort was requested: the attempt's result will be refused, as
        -- for a pgqueue job cancelled while running
        IF m.status IN ('pending', 'retrying', 'running') THEN
            PERFORM pgqueue.end_cancelled(m.id, 'aborted: procrastinate was asked to abort it');
        END IF;
        RETURN;
    END IF;

    IF v_ended AND m.status = 'running' THEN
        CASE
            WHEN p_now = 'todo' THEN
                -- retried by procrastinate's retry strategy (or a recovery)
                UPDATE pgqueue.jobs j
                   SET max_attempts = j.attempts + 1,
                       queue = COALESCE(p_queue, j.queue),
                       priority = COALESCE(p_priority, j.priority)
                 WHERE j.id = m.id;
                PERFORM pgqueue.fail(m.id, m.attempts, COALESCE(v_out.error, 'retried by procrastinate'),
                                     true, false,
                                     GREATEST(COALESCE(p_scheduled, v_ts) - v_ts, interval '0'));
            WHEN p_now = 'succeeded' OR (p_now IS NULL AND v_out.job_id IS NOT NULL AND v_out.error IS NULL) THEN
                PERFORM pgqueue.complete(m.id, m.attempts, v_out.result);
            WHEN p_now = 'aborted' THEN
                PERFORM pgqueue.end_cancelled(m.id, COALESCE(v_out.error, 'aborted'));
            ELSE
                -- failed: dead_letter after retries, failed after one attempt
                UPDATE pgqueue.jobs j SET max_attempts = j.attempts WHERE j.id = m.id;
                PERFORM pgqueue.fail(m.id, m.attempts,
                                     COALESCE(v_out.error,
                                              CASE WHEN p_now IS NULL
                                                   THEN 'deleted by procrastinate while it ran, with no outcome recorded (is pgqueue.procrastinate.middleware installed?)'
                                                   ELSE 'failed in procrastinate' END),
                                     true, false, NULL);
        END CASE;
        RETURN;
    END IF;

    IF p_was = 'todo' AND p_now IS DISTINCT FROM 'doing' AND p_now IS DISTINCT FROM 'todo' THEN
        -- cancelled (or finished, or deleted) before it ran
        IF m.status IN ('pending', 'retrying') THEN
            PERFORM pgqueue.end_cancelled(m.id, NULL);
        END IF;
        RETURN;
    END IF;

    IF p_now = 'todo' AND p_was <> 'doing' AND m.completed_at IS NOT NULL THEN
        -- retried by hand (procrastinate's retry of a failed job): replayed.
        -- A finished batch stays finished (as pgqueue's replay keeps it): the
        -- job leaves it first, and the batch keeps counting its old outcome.
        IF m.batch_id IS NOT NULL
           AND (SELECT b.completed_at IS NOT NULL FROM pgqueue.batches b WHERE b.id = m.batch_id) THEN
            UPDATE pgqueue.jobs j SET batch_id = NULL WHERE j.id = m.id;
        END IF;
        UPDATE pgqueue.jobs j
           SET status = 'pending',
               completed_at = NULL,
               result = NULL,
               progress = 0,
               progress_message = NULL,
               run_at = GREATEST(COALESCE(p_scheduled, v_ts), j.created_at),
               queue = COALESCE(p_queue, j.queue),
               priority = COALESCE(p_priority, j.priority),
               max_attempts = GREATEST(j.max_attempts, j.attempts + 1)
         WHERE j.id = m.id AND j.completed_at IS NOT NULL;
    END IF;
END $$;

-- Called by the worker middleware: the outcome of job p_job's attempt on
-- worker p_worker (p_error NULL: it returned p_result).
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.stage(
    p_job bigint, p_worker bigint, p_result jsonb, p_error text
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO pgqueue_procrastinate.outcomes (job_id, worker_id, result, error)
    VALUES (p_job, p_worker, p_result, left(p_error, 65536))
    ON CONFLICT (job_id) DO UPDATE
       SET worker_id = EXCLUDED.worker_id, result = EXCLUDED.result,
           error = EXCLUDED.error, staged_at = now()
$$;

-- Progress of job p_job from inside its task on worker p_worker, through
-- pgqueue.progress (with its history). NULL when that worker no longer holds
-- the job: a late report is dropped, never an error inside the task.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.progress(
    p_job bigint, p_worker bigint, p_pct numeric, p_message text
) RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    SELECT j.id, j.attempts INTO m FROM pgqueue.jobs j
     WHERE j.executor = 'procrastinate' AND j.external_id = p_job
       AND j.status = 'running' AND j.worker_id = pgqueue_procrastinate.holder(p_worker);
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN pgqueue.progress(m.id, m.attempts, p_pct, p_message);
EXCEPTION WHEN SQLSTATE 'PQ003' THEN
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pgqueue_procrastinate.mirror_of(p_job bigint)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT j.id FROM pgqueue.jobs j WHERE j.executor = 'procrastinate' AND j.external_id = p_job
$$;

-- An empty batch; the mirrors of jobs deferred while the setting
-- pgqueue_procrastinate.batch names it join it, and its counters follow them
-- as for pgqueue's own batches.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.open_batch(
    p_owner text, p_metadata jsonb, p_task text, p_queue text
) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO pgqueue.batches (queue, task, total, pending, owner, metadata)
    VALUES (COALESCE(p_queue, 'default'), COALESCE(p_task, ''), 0, 0, p_owner,
            COALESCE(p_metadata, '{}'))
    RETURNING id
$$;

-- pgqueue.cancel of a mirror (through pgqueue.executor_action): procrastinate's
-- cancel, with abort for a running job; the trigger then cancels the mirror.
-- procrastinate's row is locked before the mirror, the order of
-- procrastinate's own statements.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.cancel(p_id bigint)
RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_ext    bigint;
    v_before pgqueue.job_status;
    v_status text;
BEGIN
    SELECT j.external_id, j.status INTO v_ext, v_before
      FROM pgqueue.jobs j WHERE j.id = p_id AND j.executor = 'procrastinate';
    IF NOT FOUND OR v_before NOT IN ('pending', 'retrying', 'running') THEN
        PERFORM pgqueue.raise_state_error(p_id, 'cancel', 'pending, retrying or running');
    END IF;
    SELECT p.status::text INTO v_status FROM procrastinate_jobs p WHERE p.id = v_ext FOR UPDATE;
    IF v_status IN ('todo', 'doing') THEN
        PERFORM procrastinate_cancel_job_v1(v_ext, true, false);
    END IF;
    -- a mirror whose procrastinate job is gone or ended, or whose move failed
    IF (SELECT j.status FROM pgqueue.jobs j WHERE j.id = p_id FOR UPDATE)
           IN ('pending', 'retrying', 'running') THEN
        PERFORM pgqueue.end_cancelled(p_id, 'cancelled while running');
    END IF;
    RETURN 'cancelled';
END $$;

-- pgqueue.replay of a mirror: procrastinate's retry of its failed job; the
-- trigger then makes the mirror pending again.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.replay(p_id bigint, p_extra_attempts integer)
RETURNS pgqueue.job_status LANGUAGE plpgsql AS $$
DECLARE
    v_ext    bigint;
    v_before pgqueue.job_status;
    v_batch  pgqueue.batches%ROWTYPE;
    v_status text;
    v_abort  boolean;
BEGIN
    SELECT j.external_id, j.status INTO v_ext, v_before
      FROM pgqueue.jobs j WHERE j.id = p_id AND j.executor = 'procrastinate';
    IF NOT FOUND OR v_before NOT IN ('failed', 'timeout', 'zombie', 'dead_letter', 'cancelled') THEN
        PERFORM pgqueue.raise_state_error(p_id, 'replay', 'failed, timeout, zombie, dead_letter or cancelled');
    END IF;
    SELECT b.* INTO v_batch FROM pgqueue.batches b JOIN pgqueue.jobs j ON j.batch_id = b.id
     WHERE j.id = p_id;
    IF v_batch.completed_at IS NOT NULL THEN
        RAISE EXCEPTION 'pgqueue: cannot replay job %: its batch % is % (a finished batch stays finished)',
            p_id, v_batch.id, v_batch.status USING ERRCODE = 'PQ002';
    END IF;
    SELECT p.status::text, p.abort_requested INTO v_status, v_abort
      FROM procrastinate_jobs p WHERE p.id = v_ext FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: cannot replay job %: its procrastinate job % no longer exists', p_id, v_ext
            USING ERRCODE = 'PQ002';
    END IF;
    IF v_status <> 'failed' THEN
        RAISE EXCEPTION 'pgqueue: cannot replay job %: procrastinate retries only failed jobs, and its job % is %',
            p_id, v_ext, v_status USING ERRCODE = 'PQ002';
    END IF;
    IF v_abort THEN
        -- cancelled while it ran, then failed by procrastinate (a task with a
        -- retry strategy): the abort request was for that attempt, and
        -- procrastinate refuses to queue a job still asked to abort
        UPDATE procrastinate_jobs SET abort_requested = false WHERE id = v_ext;
    END IF;
    PERFORM procrastinate_retry_job_v2(v_ext, clock_timestamp(), NULL, NULL, NULL);
    RETURN (SELECT j.status FROM pgqueue.jobs j WHERE j.id = p_id);
END $$;

-- Recovery of jobs left 'doing' by a worker that died: its heartbeat in
-- procrastinate_workers stopped p_stalled_after ago, or its row is gone.
-- p_policy 'retry' retries them through procrastinate (up to p_max_attempts
-- attempts in all, when given; failed after that), 'fail' fails them; the
-- mirror's attempt records why.
CREATE OR REPLACE FUNCTION pgqueue_procrastinate.recover_stalled(
    p_stalled_after interval, p_policy text, p_max_attempts integer DEFAULT NULL
) RETURNS TABLE (job_id bigint, action text) LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF p_stalled_after IS NULL OR p_stalled_after <= interval '0' THEN
        RAISE EXCEPTION 'pgqueue: recover_stalled: stalled_after must be positive' USING ERRCODE = '22023';
    END IF;
    IF p_policy IS NULL OR p_policy NOT IN ('retry', 'fail') THEN
        RAISE EXCEPTION 'pgqueue: recover_stalled: policy must be retry or fail, not %',
            quote_nullable(p_policy) USING ERRCODE = '22023';
    END IF;
    FOR r IN
        SELECT p.id, p.worker_id, p.attempts, w.last_heartbeat
          FROM procrastinate_jobs p
          LEFT JOIN procrastinate_workers w ON w.id = p.worker_id
         WHERE p.status = 'doing'
           AND (w.id IS NULL OR w.last_heartbeat < now() - p_stalled_after)
         ORDER BY p.id
           FOR UPDATE OF p SKIP LOCKED
    LOOP
        job_id := r.id;
        action := CASE WHEN p_policy = 'retry'
                            AND (p_max_attempts IS NULL OR r.attempts + 1 < p_max_attempts)
                       THEN 'retried' ELSE 'failed' END;
        PERFORM pgqueue_procrastinate.stage(r.id, r.worker_id, NULL,
            CASE WHEN r.last_heartbeat IS NULL
                 THEN format('worker %s is gone (its heartbeat stopped); %s by pgqueue''s recovery',
                             COALESCE(r.worker_id::text, 'unknown'), action)
                 ELSE format('worker %s sent no heartbeat since %s; %s by pgqueue''s recovery',
                             r.worker_id, r.last_heartbeat, action) END);
        IF action = 'retried' THEN
            PERFORM procrastinate_retry_job_v2(r.id, clock_timestamp(), NULL, NULL, NULL);
        ELSE
            PERFORM procrastinate_finish_job_v1(r.id, 'failed', false);
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

DROP TRIGGER IF EXISTS pgqueue_mirror_inserted ON procrastinate_jobs;
CREATE TRIGGER pgqueue_mirror_inserted
    AFTER INSERT ON procrastinate_jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue_procrastinate.jobs_inserted();

DROP TRIGGER IF EXISTS pgqueue_mirror_changed ON procrastinate_jobs;
CREATE TRIGGER pgqueue_mirror_changed
    AFTER UPDATE OF status, abort_requested ON procrastinate_jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.abort_requested IS DISTINCT FROM NEW.abort_requested)
    EXECUTE FUNCTION pgqueue_procrastinate.job_changed();

DROP TRIGGER IF EXISTS pgqueue_mirror_deleted ON procrastinate_jobs;
CREATE TRIGGER pgqueue_mirror_deleted
    AFTER DELETE ON procrastinate_jobs
    FOR EACH ROW EXECUTE FUNCTION pgqueue_procrastinate.job_changed();

-- Jobs deferred before the bridge was installed.
SELECT pgqueue_procrastinate.add_mirrors(ARRAY(SELECT id FROM procrastinate_jobs), NULL, NULL);
