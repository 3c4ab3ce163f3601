-- Revision 0001 (frozen): pgqueue tables, types and indexes as first released.

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
    batch_id         bigint,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,

    CONSTRAINT jobs_queue_valid CHECK (queue <> '' AND length(queue) <= 128),
    CONSTRAINT jobs_task_valid CHECK (task <> '' AND length(task) <= 256),
    CONSTRAINT jobs_args_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT jobs_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT jobs_attempts_range CHECK (attempts >= 0 AND attempts <= max_attempts),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
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
    CONSTRAINT jobs_running_has_lease CHECK (
        status <> 'running'
        OR (attempts >= 1 AND worker_id IS NOT NULL
            AND leased_at IS NOT NULL AND heartbeat_at IS NOT NULL)
    )
);

-- The claim: per queue, highest priority first, then oldest run_at, then id.
-- Partial, so finished jobs (the bulk of a busy table) cost it nothing.
CREATE INDEX jobs_claim_idx ON pgqueue.jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying');

-- Rescue and heartbeat scans touch running jobs only.
CREATE INDEX jobs_running_idx ON pgqueue.jobs (heartbeat_at)
    WHERE status = 'running';

-- Listing and API lookups.
CREATE INDEX jobs_status_idx ON pgqueue.jobs (status, queue);
CREATE INDEX jobs_owner_idx ON pgqueue.jobs (owner, id) WHERE owner IS NOT NULL;

-- One row per finished attempt: who ran it, when, and how it ended.
CREATE TABLE pgqueue.attempts (
    job_id      bigint NOT NULL REFERENCES pgqueue.jobs (id) ON DELETE CASCADE,
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
    updated_at  timestamptz NOT NULL DEFAULT now()
);
