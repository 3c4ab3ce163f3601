"""pgqueue tables, types and indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql, run_sql_file

revision = "0001"
down_revision = None
branch_labels = ("pgqueue",)
depends_on = None


def upgrade() -> None:
    run_sql_file("0001_tables.sql")


def downgrade() -> None:
    run_sql(
        """
        DROP TABLE pgqueue.attempts;
        DROP TABLE pgqueue.jobs;
        DROP TABLE pgqueue.queues;
        DROP TYPE pgqueue.job_status;
        """
    )
