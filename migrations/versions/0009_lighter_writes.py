"""Lighter writes: enqueue_bulk (options given once) and a cheaper pgqueue_job payload.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0009_lighter_writes.sql")


def downgrade() -> None:
    run_sql_file("0009_lighter_writes_downgrade.sql")
