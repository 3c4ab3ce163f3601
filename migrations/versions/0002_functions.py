"""pgqueue transition functions and notification triggers, v1.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql, run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_functions.sql")


# The functions this revision creates; user-defined functions that may live in
# the schema are left alone.
FUNCTIONS = (
    "raise_lease_error",
    "raise_state_error",
    "retry_backoff",
    "enqueue",
    "enqueue_many",
    "claim",
    "heartbeat",
    "progress",
    "complete",
    "complete_many",
    "fail",
    "release",
    "cancel",
    "rescue",
    "replay",
    "pause_queue",
    "resume_queue",
    "notify_enqueued",
    "notify_changed",
)


def downgrade() -> None:
    # Tables and their rows stay; only the code is removed.
    run_sql(
        "DROP TRIGGER jobs_notify_enqueued ON pgqueue.jobs;"
        " DROP TRIGGER jobs_notify_changed ON pgqueue.jobs;"
        " DROP FUNCTION " + ", ".join(f"pgqueue.{name}" for name in FUNCTIONS) + ";"
    )
