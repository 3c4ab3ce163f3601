"""Batches, progress history, retention; paused children; richer notifications.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql, run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0003_batches.sql")


def downgrade() -> None:
    # Batches and progress history go; jobs keep their rows (children lose
    # their batch). The functions, triggers and indexes of revision 0002 come back.
    run_sql(
        """
        DROP TRIGGER jobs_batch_counts_update ON pgqueue.jobs;
        DROP TRIGGER jobs_batch_counts_delete ON pgqueue.jobs;
        DROP TRIGGER jobs_notify_changed ON pgqueue.jobs;
        DROP TRIGGER jobs_notify_enqueued ON pgqueue.jobs;  -- 0002 creates it again
        DROP FUNCTION pgqueue.batch_children_changed(), pgqueue.batch_apply(
                          bigint, pgqueue.job_status[], pgqueue.job_status[], bigint[]),
                      pgqueue.enqueue_batch(text[], jsonb[], text[], integer[], timestamptz[],
                          integer[], interval[], jsonb[], text, jsonb, jsonb),
                      pgqueue.raise_batch_error(bigint, text),
                      pgqueue.pause_batch(bigint), pgqueue.resume_batch(bigint),
                      pgqueue.cancel_batch(bigint), pgqueue.prune(interval, interval, integer),
                      pgqueue.enqueue_many(text[], jsonb[], text[], integer[], timestamptz[],
                          integer[], interval[], text[], jsonb[], bigint),
                      pgqueue.progress(bigint, integer, numeric, text, integer);
        -- claim, fail, release, rescue and replay read batches: drop them before it
        DROP FUNCTION pgqueue.claim(text, text[], integer, interval, text[]),
                      pgqueue.fail(bigint, integer, text, boolean, boolean, interval),
                      pgqueue.release(bigint, integer, interval),
                      pgqueue.rescue(interval, integer),
                      pgqueue.replay(bigint, integer),
                      pgqueue.batch_paused(bigint);
        ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_batch_id_fkey;
        UPDATE pgqueue.jobs SET batch_id = NULL WHERE batch_id IS NOT NULL;
        DROP TABLE pgqueue.batches;
        DROP TYPE pgqueue.batch_status;
        DROP TABLE pgqueue.progress_history;
        DROP INDEX pgqueue.jobs_batch_idx;
        DROP INDEX pgqueue.jobs_owner_completed_idx;
        DROP INDEX pgqueue.jobs_status_idx;
        CREATE INDEX jobs_status_idx ON pgqueue.jobs (status, queue);
        DROP INDEX pgqueue.jobs_claim_idx;
        ALTER TABLE pgqueue.jobs DROP COLUMN paused;
        CREATE INDEX jobs_claim_idx ON pgqueue.jobs (queue, priority DESC, run_at, id)
            WHERE status IN ('pending', 'retrying');
        """
    )
    run_sql_file("0002_functions.sql")
