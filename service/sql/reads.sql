-- Reads only the status API makes (pgqueue_service/_reads.py), each under
-- "-- name: NAME". Owner-scoped reads take the owner as a plain equality (never
-- "IS NULL OR"), so a cached generic plan still uses the (owner, ...) indexes.

-- name: active_owner_jobs
-- One owner's unfinished jobs and those finished within the window, newest
-- first. Non-terminal <=> completed_at IS NULL (a CHECK), so both halves are
-- ranges of an (owner, completed_at) index.
SELECT *
  FROM pgqueue.jobs
 WHERE owner = %(owner)s::text
   AND (completed_at IS NULL OR completed_at >= now() - %(window)s::interval)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s::int

-- name: active_jobs
-- Every owner's: unfinished jobs through the status index, plus jobs finished
-- within the window; each half limited before they are merged.
SELECT *
  FROM ((SELECT *
           FROM pgqueue.jobs
          WHERE status IN ('pending', 'retrying', 'running')
            AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
          ORDER BY id DESC
          LIMIT %(limit)s::int)
        UNION ALL
        (SELECT *
           FROM pgqueue.jobs
          WHERE status IN ('completed', 'failed', 'timeout', 'zombie', 'dead_letter', 'cancelled')
            AND completed_at >= now() - %(window)s::interval  -- jobs_status_idx
            AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
          ORDER BY id DESC
          LIMIT %(limit)s::int)) AS active
 ORDER BY id DESC
 LIMIT %(limit)s::int

-- name: queue_gauges
-- Per queue: paused flag, counts of the unfinished states and the age of the
-- oldest due job. Reads only unfinished rows (the partial claim index covers
-- pending and retrying, the running index covers running), never the history.
WITH waiting AS (
    SELECT queue, status, count(*) AS n, min(run_at) FILTER (WHERE run_at <= now()) AS oldest
      FROM pgqueue.jobs
     WHERE status IN ('pending', 'retrying')
     GROUP BY queue, status
), running AS (
    SELECT queue, status, count(*) AS n, NULL::timestamptz AS oldest
      FROM pgqueue.jobs
     WHERE status = 'running'
     GROUP BY queue, status
), counts AS (
    SELECT * FROM waiting UNION ALL SELECT * FROM running
), names AS (
    SELECT queue AS name FROM counts
    UNION
    SELECT name FROM pgqueue.queues
)
SELECT names.name AS queue,
       COALESCE(q.paused, false) AS paused,
       q.rate_limit,
       EXTRACT(EPOCH FROM q.rate_period)::float8 AS rate_per,
       CASE WHEN q.rate_limit IS NOT NULL THEN
           pgqueue.rate_used(q, clock_timestamp())
       END AS rate_used,
       COALESCE(jsonb_object_agg(c.status, c.n) FILTER (WHERE c.status IS NOT NULL), '{}') AS counts,
       EXTRACT(EPOCH FROM clock_timestamp() - min(c.oldest))::float8 AS oldest_pending_age
  FROM names
  LEFT JOIN counts c ON c.queue = names.name
  LEFT JOIN pgqueue.queues q ON q.name = names.name
 WHERE %(after)s::text IS NULL OR names.name > %(after)s::text
 GROUP BY names.name, q.name
 ORDER BY names.name
 LIMIT %(limit)s::int

-- name: owner_queue_gauges
-- queue_gauges restricted to one owner's jobs (non-terminal <=> completed_at IS NULL).
WITH counts AS (
    SELECT queue, status, count(*) AS n,
           min(run_at) FILTER (WHERE status IN ('pending', 'retrying') AND run_at <= now()) AS oldest
      FROM pgqueue.jobs
     WHERE owner = %(owner)s::text AND completed_at IS NULL
       AND (%(after)s::text IS NULL OR queue > %(after)s::text)
     GROUP BY queue, status
)
SELECT c.queue,
       COALESCE(q.paused, false) AS paused,
       q.rate_limit,
       EXTRACT(EPOCH FROM q.rate_period)::float8 AS rate_per,
       CASE WHEN q.rate_limit IS NOT NULL THEN
           pgqueue.rate_used(q, clock_timestamp())
       END AS rate_used,
       jsonb_object_agg(c.status, c.n) AS counts,
       EXTRACT(EPOCH FROM clock_timestamp() - min(c.oldest))::float8 AS oldest_pending_age
  FROM counts c
  LEFT JOIN pgqueue.queues q ON q.name = c.queue
 GROUP BY c.queue, q.name
 ORDER BY c.queue
 LIMIT %(limit)s::int
