"""enqueue_bulk: many jobs of one task with their options given once.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql, run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0009_bulk_enqueue.sql")


def downgrade() -> None:
    run_sql(
        "DROP FUNCTION pgqueue.enqueue_bulk(text, jsonb[], text, integer, timestamptz, integer,"
        " interval, text, jsonb, text[], text, interval, text[], integer)"
    )
