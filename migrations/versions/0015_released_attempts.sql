-- pgqueue revision 0015: the attempts a job was handed back, in a column.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- release() hands a running job back at worker shutdown without charging the
-- attempt: max_attempts grows by one. fail() then had to tell a job configured
-- with retries from one that was only handed back, and did so by counting
-- the job's 'interrupted' attempts in its history. That count is now a
-- column, released, which release() raises in the statement that raises
-- max_attempts; fail() reads it. The retry budget a job was given is
-- max_attempts - released, and a CHECK keeps it at least 1.
--
-- Additive: the previous release keeps working against it (fail and release
-- keep their names, arguments and results; the new column has a default).
INSERT INTO pgqueue.served_revisions (revision) VALUES ('0015');

ALTER TABLE pgqueue.jobs ADD COLUMN released integer NOT NULL DEFAULT 0;
UPDATE pgqueue.jobs j
   SET released = h.n
  FROM (SELECT a.job_id, count(*)::integer AS n
          FROM pgqueue.attempts a
         WHERE a.outcome = 'interrupted'
         GROUP BY a.job_id) AS h
 WHERE j.id = h.job_id;
ALTER TABLE pgqueue.jobs
    ADD CONSTRAINT jobs_released_range CHECK (released >= 0 AND released < max_attempts);

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
