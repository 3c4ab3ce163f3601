-- pgqueue revision 0013: jobs another executor runs (the procrastinate bridge).
-- Frozen: never edited once released; later changes go in a new revision.
--
-- A mirror row stands in pgqueue.jobs for a job another executor runs: a
-- procrastinate job, mirrored by the bridge that `pgqueue procrastinate
-- install` adds (docs/procrastinate.md), so pgqueue's API, events, batches,
-- progress history and metrics cover it. executor and external_id name the
-- executor and the job's id there. A mirror is never claimable (paused; the
-- claim's index excludes paused rows) nor rescued: its executor runs it and
-- its bridge moves it. cancel and replay of a mirror go through the
-- executor's bridge (executor_action), so the executor's tables decide; a
-- batch of mirrors cannot be paused, and is cancelled through the bridge. A
-- new mirror does not wake pgqueue's workers (notify_enqueued).
--
-- Additive: the previous releases keep working against it (the columns are
-- nullable and every function keeps its name and arguments).
ALTER TABLE pgqueue.jobs ADD COLUMN executor text, ADD COLUMN external_id bigint;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_executor_valid CHECK (
        (executor IS NULL AND external_id IS NULL)
        OR (executor = 'procrastinate' AND external_id IS NOT NULL AND paused));
CREATE UNIQUE INDEX jobs_external_idx ON pgqueue.jobs (executor, external_id)
    WHERE executor IS NOT NULL;
INSERT INTO pgqueue.served_revisions (revision) VALUES ('0013');

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
                   WHEN j.max_attempts - (SELECT count(*) FROM pgqueue.attempts a
                                           WHERE a.job_id = j.id
                                             AND a.outcome = 'interrupted') <= 1 THEN 'failed'
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

CREATE OR REPLACE FUNCTION pgqueue.notify_enqueued()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue_enqueue', q.queue)
       FROM (SELECT DISTINCT n.queue FROM new_jobs n
              WHERE n.run_at <= now() AND n.executor IS NULL) AS q;
    RETURN NULL;
END $$;

-- complete: one lease's completion planned once per session (the bridge
-- completes one job per call).
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
