-- pgqueue schema: the current truth for tables, types and indexes.
--
-- The stored functions that move jobs between states live in functions.sql.
-- A database built from these two files must equal one built by the alembic
-- migrations in migrations/versions (tests/migrations checks the catalogs).

CREATE SCHEMA IF NOT EXISTS pgqueue;

-- One definition of the job states, mirrored by pgqueue.JobStatus in Python
-- (a test compares the two). docs/state-machine.md documents who moves a job
-- into and out of each state.
CREATE TYPE pgqueue.job_status AS ENUM (
    'pending',      -- waiting; claimable once run_at <= now() and its queue is not paused
    'running',      -- held by one worker's lease (id + attempt), heartbeating
    'retrying',     -- an attempt ended badly; the next one is due at run_at
    'completed',    -- terminal: the task returned, result holds its value
    'failed',       -- terminal: not retryable, or no retries configured
    'timeout',      -- terminal: the final attempt exceeded its time limit
    'zombie',       -- terminal: the final attempt's worker vanished
    'dead_letter',  -- terminal: max_attempts used up by errors
    'cancelled'     -- terminal: cancelled by a user or operator
);

CREATE TABLE pgqueue.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text NOT NULL DEFAULT 'default',
    task             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           pgqueue.job_status NOT NULL DEFAULT 'pending',
    priority         integer NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 1,
    timeout          interval,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,          -- first time any attempt started
    leased_at        timestamptz,          -- start of the current (or last) attempt
    completed_at     timestamptz,          -- set exactly when the job is terminal
    heartbeat_at     timestamptz,
    lease_timeout    interval,             -- the holder's heartbeat deadline (stale_after)
    worker_id        text,
    progress         smallint NOT NULL DEFAULT 0,
    progress_message text,
    result           jsonb,
    error            text,
    owner            text,
    batch_id         bigint,               -- REFERENCES pgqueue.batches, added below
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    paused           boolean NOT NULL DEFAULT false,  -- not claimable: its batch is paused,
                                                      -- or another executor runs it
    dedupe_key       text,                 -- unique jobs: the key, per task (docs/scheduling.md)
    dedupe_scope     text,                 -- ... and how long the job holds it
    concurrency_key  text,                 -- at most concurrency_limit running jobs per key
    concurrency_limit integer,             -- ... (docs/scheduling.md)
    executor         text,                 -- NULL: pgqueue's workers run it; else the executor
    external_id      bigint,               -- ... that does, and its id there (a mirror row)
    released         integer NOT NULL DEFAULT 0,  -- attempts handed back at shutdown, not charged

    CONSTRAINT jobs_queue_valid CHECK (queue <> '' AND length(queue) <= 128),
    CONSTRAINT jobs_task_valid CHECK (task <> '' AND length(task) <= 256),
    CONSTRAINT jobs_args_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT jobs_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT jobs_attempts_range CHECK (attempts >= 0 AND attempts <= max_attempts),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
    -- release() raises max_attempts with released: the job was configured
    -- with max_attempts - released attempts
    CONSTRAINT jobs_released_range CHECK (released >= 0 AND released < max_attempts),
    CONSTRAINT jobs_timeout_positive CHECK (timeout IS NULL OR timeout > interval '0'),
    CONSTRAINT jobs_lease_timeout_positive CHECK (lease_timeout > interval '0'),
    CONSTRAINT jobs_owner_valid CHECK (owner <> '' AND length(owner) <= 256),
    CONSTRAINT jobs_progress_range CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT jobs_started_after_created CHECK (started_at >= created_at),
    CONSTRAINT jobs_leased_after_started CHECK (leased_at >= started_at),
    CONSTRAINT jobs_completed_after_started
        CHECK (completed_at >= COALESCE(started_at, created_at)),
    CONSTRAINT jobs_terminal_iff_completed_at CHECK (
        (status IN ('completed', 'failed', 'timeout', 'zombie', 'dead_letter', 'cancelled'))
        = (completed_at IS NOT NULL)
    ),
    -- pending: until the job first starts; active: until it finishes;
    -- window: the enqueuer checks jobs created within its window (no index can)
    CONSTRAINT jobs_dedupe_valid CHECK (
        (dedupe_key IS NULL) = (dedupe_scope IS NULL)
        AND length(dedupe_key) BETWEEN 1 AND 512
        AND dedupe_scope IN ('pending', 'active', 'window')),
    CONSTRAINT jobs_concurrency_valid CHECK (
        (concurrency_key IS NULL) = (concurrency_limit IS NULL)
        AND length(concurrency_key) BETWEEN 1 AND 512
        AND concurrency_limit >= 1),
    -- A mirror of another executor's job (docs/procrastinate.md) is moved by
    -- that executor's bridge only: never claimable, so pgqueue never runs it.
    CONSTRAINT jobs_executor_valid CHECK (
        (executor IS NULL AND external_id IS NULL)
        OR (executor = 'procrastinate' AND external_id IS NOT NULL AND paused)),
    CONSTRAINT jobs_running_has_lease CHECK (
        status <> 'running'
        OR (attempts >= 1 AND worker_id IS NOT NULL
            AND leased_at IS NOT NULL AND heartbeat_at IS NOT NULL)
    )
);

-- The claim: per queue, highest priority first, then oldest run_at, then id.
-- Partial, so finished jobs (the bulk of a busy table) cost it nothing.
-- Jobs with a concurrency key wait in their own index (below).
CREATE INDEX jobs_claim_idx ON pgqueue.jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND NOT paused AND concurrency_key IS NULL;

-- Concurrency keys: the claim walks the distinct waiting keys of a queue and
-- takes each key's jobs in claim order from this index, and counts a key's
-- running jobs with the next one.
CREATE INDEX jobs_claim_keyed_idx
    ON pgqueue.jobs (queue, concurrency_key, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND NOT paused AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_running_key_idx ON pgqueue.jobs (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

-- Rescue and heartbeat scans touch running jobs only.
CREATE INDEX jobs_running_idx ON pgqueue.jobs (heartbeat_at)
    WHERE status = 'running';

-- Listing by state, and retention (finished jobs by state and age).
CREATE INDEX jobs_status_idx ON pgqueue.jobs (status, completed_at);

-- The API's per-owner views: listing, and "active" (completed_at IS NULL
-- exactly when the job is not terminal) plus "finished recently".
CREATE INDEX jobs_owner_idx ON pgqueue.jobs (owner, id) WHERE owner IS NOT NULL;
CREATE INDEX jobs_owner_completed_idx ON pgqueue.jobs (owner, completed_at)
    WHERE owner IS NOT NULL;

-- Children of a batch, by state (pause, cancel, progress, retention).
CREATE INDEX jobs_batch_idx ON pgqueue.jobs (batch_id, status) WHERE batch_id IS NOT NULL;

-- Unique jobs. A job holds its (task, dedupe_key) while it is in its scope;
-- this index lets one holder exist at a time, so a duplicate enqueue
-- (INSERT ... ON CONFLICT DO NOTHING) finds the holder instead. Only replay
-- can move a job back into its scope; it refuses while another job holds the key.
CREATE UNIQUE INDEX jobs_dedupe_held_idx ON pgqueue.jobs (task, dedupe_key)
    WHERE dedupe_key IS NOT NULL
      AND ((dedupe_scope = 'pending' AND status = 'pending' AND attempts = 0)
           OR (dedupe_scope = 'active' AND status IN ('pending', 'retrying', 'running')));

-- A mirror by its executor's id (the bridge's triggers find it so).
CREATE UNIQUE INDEX jobs_external_idx ON pgqueue.jobs (executor, external_id)
    WHERE executor IS NOT NULL;

-- Window-scoped unique jobs: the newest job of a key, by creation time.
CREATE INDEX jobs_dedupe_created_idx ON pgqueue.jobs (task, dedupe_key, created_at)
    WHERE dedupe_key IS NOT NULL;

-- One row per finished attempt: who ran it, when, and how it ended. Only the
-- transition functions write it, each for the job row it just updated; job_id
-- is not a foreign key (no per-row check on the hot path): the jobs_deleted
-- trigger deletes a job's attempts with it.
CREATE TABLE pgqueue.attempts (
    job_id      bigint NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    outcome     text NOT NULL,
    error       text,
    PRIMARY KEY (job_id, attempt),
    CONSTRAINT attempts_ended_after_started CHECK (ended_at >= started_at),
    -- completed: returned; error: raised; timeout: exceeded its limit;
    -- lost: heartbeat lost (worker died); cancelled: cancelled while running;
    -- interrupted: handed back at worker shutdown (not charged as an attempt)
    CONSTRAINT attempts_outcome_valid CHECK (
        outcome IN ('completed', 'error', 'timeout', 'lost', 'cancelled', 'interrupted'))
);

-- Queues exist implicitly; a row here only records operator settings.
CREATE TABLE pgqueue.queues (
    name        text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    rate_limit  integer,    -- at most rate_limit jobs started in any rate_period
    rate_period interval,   -- ... (docs/scheduling.md); NULL: no limit
    rate_at     timestamptz[] NOT NULL DEFAULT '{}',  -- the window: claims within the
    rate_n      integer[] NOT NULL DEFAULT '{}',      -- last rate_period, and their job counts
    CONSTRAINT queues_rate_valid CHECK (
        (rate_limit IS NULL) = (rate_period IS NULL)
        AND rate_limit >= 1 AND rate_period > interval '0'
        AND cardinality(rate_at) = cardinality(rate_n))
);

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

-- The library releases (their head revisions) this schema serves, so a
-- release still running during a rolling deploy can tell a newer schema it
-- works against from one it does not (docs/operations.md, "Upgrades").
CREATE TABLE pgqueue.served_revisions (
    revision text PRIMARY KEY
);
INSERT INTO pgqueue.served_revisions (revision) VALUES ('0010'), ('0011'), ('0012'), ('0013'), ('0014'), ('0015');
