-- Named queries used by the pgqueue library. Each starts with "-- name: NAME"
-- and is loaded by pgqueue/_sql.py; library code never assembles SQL text.
-- Array parameters of the bulk queries use %(name)b: sent in binary, they
-- skip the text format's per-element quoting (about a fifth of a bulk enqueue).
-- Bulk arguments travel as the JSON texts the library made when it checked
-- them, as one text[] the server casts to jsonb[] (no jsonb dumper per item).
-- Transitions are calls to the stored functions in functions.sql.

-- name: enqueue
SELECT pgqueue.enqueue(%(task)s::text, %(args)s::jsonb, %(queue)s::text, %(priority)s::int,
                       %(run_at)s::timestamptz, %(max_attempts)s::int, %(timeout)s::interval,
                       %(owner)s::text, %(metadata)s::jsonb, %(dedupe_key)s::text,
                       %(dedupe_scope)s::text, %(dedupe_window)s::interval,
                       %(concurrency_key)s::text, %(concurrency_limit)s::int) AS id

-- name: enqueue_bulk
-- The ids as one array in item order: one row to read instead of one per job.
SELECT array_agg(e.id ORDER BY e.n) AS ids
  FROM pgqueue.enqueue_bulk(%(task)s::text, %(args)b::text[]::jsonb[], %(queue)s::text,
                                 %(priority)s::int, %(run_at)s::timestamptz,
                                 %(max_attempts)s::int, %(timeout)s::interval, %(owner)s::text,
                                 %(metadata)s::jsonb, %(dedupe_keys)b::text[],
                                 %(dedupe_scope)s::text, %(dedupe_window)s::interval,
                                 %(concurrency_keys)b::text[],
                                 %(concurrency_limit)s::int) WITH ORDINALITY AS e(id, n)

-- name: claim
SELECT id, task, args, queue, attempts, max_attempts,
       EXTRACT(EPOCH FROM timeout)::float8 AS timeout
  FROM pgqueue.claim(%(worker_id)s::text, %(queues)s::text[], %(limit)s::int,
                     %(lease_timeout)s::interval, %(tasks)s::text[])

-- name: heartbeat
SELECT id, attempt, refreshed
  FROM pgqueue.heartbeat(%(worker_id)s::text, %(ids)b::bigint[], %(attempts)b::int[])

-- name: held_by_worker
SELECT id, attempts
  FROM pgqueue.jobs
 WHERE status = 'running' AND worker_id = %(worker_id)s::text
   AND leased_at >= clock_timestamp() - %(within)s::interval

-- name: progress
SELECT pgqueue.progress(%(id)s::bigint, %(attempt)s::int, %(pct)s::numeric, %(message)s::text,
                        %(history)s::int) AS progress

-- name: complete_many
SELECT id, attempt FROM pgqueue.complete_many(%(ids)b::bigint[], %(attempts)b::int[], %(results)b::jsonb[])

-- name: fail
SELECT pgqueue.fail(%(id)s::bigint, %(attempt)s::int, %(error)s::text, %(retryable)s::boolean,
                    %(timed_out)s::boolean, %(retry_in)s::interval) AS status

-- name: release
SELECT pgqueue.release(%(id)s::bigint, %(attempt)s::int, %(run_in)s::interval)

-- name: cancel
SELECT pgqueue.cancel(%(id)s::bigint) AS status

-- name: replay
SELECT pgqueue.replay(%(id)s::bigint, %(extra_attempts)s::int) AS status

-- name: rescue
SELECT id, status FROM pgqueue.rescue(%(stale_after)s::interval)

-- name: pause_queue
SELECT pgqueue.pause_queue(%(name)s::text)

-- name: set_rate_limit
SELECT pgqueue.set_rate_limit(%(name)s::text, %(limit)s::int, %(period)s::interval)

-- name: rate_wait
SELECT pgqueue.rate_wait(%(queues)s::text[]) AS wait

-- name: resume_queue
SELECT pgqueue.resume_queue(%(name)s::text)

-- name: get_job
SELECT * FROM pgqueue.jobs WHERE id = %(id)s::bigint

-- name: job_outcome
SELECT status, result, error FROM pgqueue.jobs WHERE id = %(id)s::bigint

-- name: list_jobs
SELECT *
  FROM pgqueue.jobs
 WHERE (%(status)s::pgqueue.job_status[] IS NULL OR status = ANY(%(status)s::pgqueue.job_status[]))
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(task)s::text IS NULL OR task = %(task)s::text)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s::int

-- name: attempts
SELECT job_id, attempt, worker_id, started_at, ended_at, outcome, error
  FROM pgqueue.attempts
 WHERE job_id = %(id)s::bigint
 ORDER BY attempt

-- name: queue_stats
WITH counts AS (
    SELECT queue, status, count(*) AS n, min(run_at) FILTER (WHERE status IN ('pending', 'retrying') AND run_at <= now()) AS oldest
      FROM pgqueue.jobs
     GROUP BY queue, status
), names AS (
    SELECT queue AS name FROM counts
    UNION
    SELECT name FROM pgqueue.queues
)
SELECT names.name AS queue,
       COALESCE(q.paused, false) AS paused,
       COALESCE(jsonb_object_agg(c.status, c.n) FILTER (WHERE c.status IS NOT NULL), '{}') AS counts,
       EXTRACT(EPOCH FROM clock_timestamp() - min(c.oldest))::float8 AS oldest_pending_age,
       q.rate_limit,
       EXTRACT(EPOCH FROM q.rate_period)::float8 AS rate_per,
       -- jobs started within the last rate_per seconds (counted against the limit)
       CASE WHEN q.rate_limit IS NOT NULL THEN
           pgqueue.rate_used(q, clock_timestamp())
       END AS rate_used
  FROM names
  LEFT JOIN counts c ON c.queue = names.name
  LEFT JOIN pgqueue.queues q ON q.name = names.name
 GROUP BY names.name, q.name
 ORDER BY names.name

-- name: unfinished
-- Jobs that keep an until-idle worker going: running ones, and those that
-- will become claimable (not held back by a paused queue or batch).
SELECT count(*) AS n
  FROM pgqueue.jobs j
 WHERE j.queue = ANY(%(queues)s::text[])
   AND (j.status = 'running'
        OR (j.status IN ('pending', 'retrying') AND NOT j.paused
            AND NOT EXISTS (SELECT 1 FROM pgqueue.queues q WHERE q.name = j.queue AND q.paused)))

-- name: enqueue_batch
SELECT pgqueue.enqueue_batch(%(tasks)b::text[], %(args)b::text[]::jsonb[], %(queues)b::text[],
                             %(priorities)b::int[], %(run_ats)b::timestamptz[],
                             %(max_attempts)b::int[], %(timeouts)b::interval[],
                             %(metadata)b::jsonb[], %(owner)s::text, %(batch_metadata)s::jsonb,
                             %(on_complete)s::jsonb) AS id

-- name: get_batch
SELECT * FROM pgqueue.batches WHERE id = %(id)s::bigint

-- name: list_batches
SELECT *
  FROM pgqueue.batches
 WHERE (%(status)s::pgqueue.batch_status[] IS NULL
        OR status = ANY(%(status)s::pgqueue.batch_status[]))
   AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s::int

-- name: batch_children
SELECT *
  FROM pgqueue.jobs
 WHERE batch_id = %(id)s::bigint
   AND (%(status)s::pgqueue.job_status[] IS NULL OR status = ANY(%(status)s::pgqueue.job_status[]))
   AND (%(after_id)s::bigint IS NULL OR id > %(after_id)s::bigint)
 ORDER BY id
 LIMIT %(limit)s::int

-- name: batch_results
SELECT id, status, result, error
  FROM pgqueue.jobs
 WHERE batch_id = %(id)s::bigint
 ORDER BY id

-- name: batch_errors
SELECT id, status, error
  FROM pgqueue.jobs
 WHERE batch_id = %(id)s::bigint
   AND status IN ('failed', 'timeout', 'zombie', 'dead_letter', 'cancelled')
 ORDER BY id
 LIMIT 100

-- name: pause_batch
SELECT pgqueue.pause_batch(%(id)s::bigint) AS status

-- name: resume_batch
SELECT pgqueue.resume_batch(%(id)s::bigint) AS status

-- name: cancel_batch
SELECT pgqueue.cancel_batch(%(id)s::bigint) AS status

-- name: progress_history
SELECT id, job_id, attempt, at, pct, message
  FROM pgqueue.progress_history
 WHERE job_id = %(id)s::bigint
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s::timestamptz)
   AND (%(after_id)s::bigint IS NULL OR id > %(after_id)s::bigint)
 ORDER BY id
 LIMIT %(limit)s::int

-- name: vacuum_lock
SELECT pg_try_advisory_lock(hashtext('pgqueue.vacuum')) AS locked

-- name: vacuum_unlock
SELECT pg_advisory_unlock(hashtext('pgqueue.vacuum')) AS unlocked

-- name: vacuum_session
SET statement_timeout = 0

-- name: vacuum_candidates
SELECT s.relname::text AS name, s.n_dead_tup AS dead,
       pg_has_role(c.relowner, 'USAGE') AS owned
  FROM pg_stat_user_tables s
  JOIN pg_class c ON c.oid = s.relid
 WHERE s.schemaname = 'pgqueue' AND s.relname IN ('jobs', 'attempts', 'progress_history')
   AND s.n_dead_tup >= GREATEST(%(min_dead)s::bigint, %(fraction)s::float8 * s.n_live_tup)
 ORDER BY s.relname

-- name: vacuum_attempts
-- Plain VACUUM, without its final truncation of empty pages at the end of the
-- table (that step takes an ACCESS EXCLUSIVE lock, replayed on standbys); the
-- space is reused by new rows instead.
VACUUM (TRUNCATE false) pgqueue.attempts

-- name: vacuum_jobs
VACUUM (TRUNCATE false) pgqueue.jobs

-- name: vacuum_progress_history
VACUUM (TRUNCATE false) pgqueue.progress_history

-- name: prune
SELECT pgqueue.prune(%(completed_after)s::interval, %(failed_after)s::interval, %(limit)s::int) AS deleted

-- Owner-scoped reads take the owner as a plain equality (never "IS NULL OR"),
-- so a cached generic plan still uses the (owner, ...) indexes. The status
-- API's own reads are in service/sql/reads.sql.

-- name: list_owner_jobs
SELECT *
  FROM pgqueue.jobs
 WHERE owner = %(owner)s::text
   AND (%(status)s::pgqueue.job_status[] IS NULL OR status = ANY(%(status)s::pgqueue.job_status[]))
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(task)s::text IS NULL OR task = %(task)s::text)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s::int

-- Periodic tasks (pgqueue/_periodic.py).

-- name: periodic_state
-- The database's clock and each schedule's latest recorded tick.
SELECT clock_timestamp() AS now, n.name, t.tick AS last_tick, t.job_id AS last_job_id
  FROM unnest(%(names)s::text[]) AS n(name)
  LEFT JOIN LATERAL (
      SELECT p.tick, p.job_id
        FROM pgqueue.periodic_ticks p
       WHERE p.name = n.name
       ORDER BY p.tick DESC
       LIMIT 1
  ) AS t ON true

-- name: enqueue_tick
SELECT pgqueue.enqueue_tick(%(name)s::text, %(tick)s::timestamptz, %(task)s::text, %(args)s::jsonb,
                            %(queue)s::text, %(priority)s::int, %(max_attempts)s::int,
                            %(timeout)s::interval, %(enqueue)s::boolean) AS id

-- name: schema_revision
-- The alembic revision of the pgqueue schema (pgqueue._migrate.VERSION_TABLE).
SELECT version_num FROM pgqueue.pgqueue_alembic_version

-- name: serves_revision
-- Whether the installed schema serves a release whose head is %(revision)s
-- (the table exists from revision 0011 on).
SELECT EXISTS (SELECT 1 FROM pgqueue.served_revisions WHERE revision = %(revision)s) AS served
