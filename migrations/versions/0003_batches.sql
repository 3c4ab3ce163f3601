-- pgqueue revision 0003: batches, progress history, retention.
-- Frozen: never edited once released; later changes go in a new revision.

ALTER TABLE pgqueue.jobs ADD COLUMN paused boolean NOT NULL DEFAULT false;

DROP INDEX pgqueue.jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON pgqueue.jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND NOT paused;

DROP INDEX pgqueue.jobs_status_idx;
CREATE INDEX jobs_status_idx ON pgqueue.jobs (status, completed_at);
CREATE INDEX jobs_owner_completed_idx ON pgqueue.jobs (owner, completed_at)
    WHERE owner IS NOT NULL;
CREATE INDEX jobs_batch_idx ON pgqueue.jobs (batch_id, status) WHERE batch_id IS NOT NULL;

-- Progress reports of each job, newest last; bounded per job by the progress()
-- function, deleted with the job.
CREATE TABLE pgqueue.progress_history (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   bigint NOT NULL REFERENCES pgqueue.jobs (id) ON DELETE CASCADE,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL,
    pct      smallint NOT NULL,
    message  text,
    CONSTRAINT progress_history_pct_range CHECK (pct BETWEEN 0 AND 100)
);
CREATE INDEX progress_history_job_idx ON pgqueue.progress_history (job_id, id);

-- Batches: a parent of many child jobs, followed as a whole. The counters are
-- the number of children in each state; they are kept by a trigger on jobs in
-- the same statement that moves a child, so they always equal a recount.
CREATE TYPE pgqueue.batch_status AS ENUM (
    'pending',                -- no child has started yet
    'running',                -- some child left pending; not all are finished
    'paused',                 -- paused by a user: its children are not claimed
    'completed',              -- final: every child completed
    'completed_with_errors',  -- final: every child finished, some did not complete
    'cancelled'               -- final: cancelled by a user or operator
);

CREATE TABLE pgqueue.batches (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue               text NOT NULL,
    task                text NOT NULL,
    status              pgqueue.batch_status NOT NULL DEFAULT 'pending',
    paused              boolean NOT NULL DEFAULT false,
    total               integer NOT NULL,
    pending             integer NOT NULL DEFAULT 0,
    running             integer NOT NULL DEFAULT 0,
    retrying            integer NOT NULL DEFAULT 0,
    completed           integer NOT NULL DEFAULT 0,
    failed              integer NOT NULL DEFAULT 0,
    timeout             integer NOT NULL DEFAULT 0,
    zombie              integer NOT NULL DEFAULT 0,
    dead_letter         integer NOT NULL DEFAULT 0,
    cancelled           integer NOT NULL DEFAULT 0,
    owner               text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    on_complete         jsonb,    -- the job to enqueue when the batch finishes
    on_complete_job_id  bigint,   -- ... and its id, once enqueued
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    completed_at        timestamptz,

    -- total drops as retention deletes a finished batch's children
    CONSTRAINT batches_total_nonnegative CHECK (total >= 0),
    CONSTRAINT batches_counts_nonnegative CHECK (
        LEAST(pending, running, retrying, completed, failed, timeout, zombie, dead_letter,
              cancelled) >= 0),
    CONSTRAINT batches_counts_sum CHECK (
        pending + running + retrying + completed + failed + timeout + zombie + dead_letter
        + cancelled = total),
    CONSTRAINT batches_owner_valid CHECK (owner <> '' AND length(owner) <= 256),
    CONSTRAINT batches_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT batches_on_complete_object CHECK (jsonb_typeof(on_complete) = 'object'),
    CONSTRAINT batches_paused_flag CHECK (status <> 'paused' OR paused),
    CONSTRAINT batches_started_after_created CHECK (started_at >= created_at),
    CONSTRAINT batches_completed_after_started
        CHECK (completed_at >= COALESCE(started_at, created_at)),
    CONSTRAINT batches_final_iff_completed_at CHECK (
        (status IN ('completed', 'completed_with_errors', 'cancelled'))
        = (completed_at IS NOT NULL)),
    CONSTRAINT batches_completed_all CHECK (status <> 'completed' OR completed = total),
    CONSTRAINT batches_finished_children_finished CHECK (
        status NOT IN ('completed', 'completed_with_errors') OR pending + running + retrying = 0)
);
CREATE INDEX batches_owner_idx ON pgqueue.batches (owner, id) WHERE owner IS NOT NULL;
CREATE INDEX batches_finished_idx ON pgqueue.batches (completed_at)
    WHERE completed_at IS NOT NULL;

ALTER TABLE pgqueue.jobs
    ADD CONSTRAINT jobs_batch_id_fkey FOREIGN KEY (batch_id) REFERENCES pgqueue.batches (id);

DROP FUNCTION pgqueue.enqueue_many(text[], jsonb[], text[], integer[], timestamptz[], integer[],
                                   interval[], text[], jsonb[]);
DROP FUNCTION pgqueue.progress(bigint, integer, numeric, text);
DROP TRIGGER jobs_notify_changed ON pgqueue.jobs;

CREATE OR REPLACE FUNCTION pgqueue.batch_paused(p_id bigint)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pgqueue.batches b WHERE b.id = p_id AND b.paused)
$$;

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
               paused = j.batch_id IS NOT NULL AND pgqueue.batch_paused(j.batch_id),
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

CREATE OR REPLACE FUNCTION pgqueue.release(p_id bigint, p_attempt integer, p_run_in interval DEFAULT '0')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_run_in IS NULL OR p_run_in < interval '0' THEN
        RAISE EXCEPTION 'pgqueue: release: run_in must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    WITH ts AS (SELECT clock_timestamp() AS now),
    released AS (
        UPDATE pgqueue.jobs j
           SET status = 'pending', run_at = ts.now + p_run_in, max_attempts = j.max_attempts + 1,
               paused = j.batch_id IS NOT NULL AND pgqueue.batch_paused(j.batch_id)
          FROM ts
         WHERE j.id = p_id AND j.attempts = p_attempt AND j.status = 'running'
        RETURNING j.id, j.attempts, j.worker_id, j.leased_at, GREATEST(ts.now, j.leased_at) AS ended_at
    )
    INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome, error)
    SELECT id, attempts, worker_id, leased_at, ended_at, 'interrupted', 'worker shut down'
      FROM released;
    IF NOT FOUND THEN
        PERFORM pgqueue.raise_lease_error(p_id, p_attempt, 'release');
    END IF;
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
         WHERE j.status = 'running'
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

CREATE OR REPLACE FUNCTION pgqueue.batch_apply(
    p_id  bigint,
    p_was pgqueue.job_status[],
    p_now pgqueue.job_status[],
    p_ids bigint[] DEFAULT NULL
) RETURNS void LANGUAGE plpgsql AS $$
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
         WHERE id = ANY(p_ids) AND status IN ('pending', 'retrying') AND paused <> b.paused;
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

CREATE OR REPLACE FUNCTION pgqueue.batch_children_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
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
    ELSE
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
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_batch_counts_update
    AFTER UPDATE ON pgqueue.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.batch_children_changed();

CREATE TRIGGER jobs_batch_counts_delete
    AFTER DELETE ON pgqueue.jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.batch_children_changed();

CREATE OR REPLACE FUNCTION pgqueue.pause_batch(p_id bigint)
RETURNS pgqueue.batch_status LANGUAGE plpgsql AS $$
DECLARE
    v_status pgqueue.batch_status;
BEGIN
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
    PERFORM 1 FROM pgqueue.jobs WHERE batch_id = p_id AND paused ORDER BY id FOR UPDATE;
    UPDATE pgqueue.jobs SET paused = false WHERE batch_id = p_id AND paused;
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
BEGIN
    PERFORM 1 FROM pgqueue.jobs
     WHERE batch_id = p_id AND status IN ('pending', 'retrying', 'running')
     ORDER BY id
       FOR UPDATE;
    UPDATE pgqueue.batches
       SET status = 'cancelled', paused = false,
           started_at = COALESCE(started_at, GREATEST(clock_timestamp(), created_at)),
           completed_at = GREATEST(clock_timestamp(), created_at, started_at)
     WHERE id = p_id AND completed_at IS NULL;
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

CREATE OR REPLACE FUNCTION pgqueue.notify_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue_job', json_build_object(
        'id', NEW.id, 'status', NEW.status, 'progress', NEW.progress, 'queue', NEW.queue,
        'owner', NEW.owner, 'batch_id', NEW.batch_id,
        'message', left(NEW.progress_message, 200))::text);
    IF NEW.status = 'cancelled' AND OLD.status = 'running' THEN
        PERFORM pg_notify('pgqueue_cancel', NEW.id::text);
    ELSIF NEW.status = 'pending' AND OLD.status <> 'pending' THEN
        PERFORM pg_notify('pgqueue_enqueue', NEW.queue);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_changed
    AFTER UPDATE OF status, progress, progress_message ON pgqueue.jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress
          OR OLD.progress_message IS DISTINCT FROM NEW.progress_message)
    EXECUTE FUNCTION pgqueue.notify_changed();
