"""Unique jobs (dedupe keys) and periodic tasks (ticks recorded once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0004_scheduling.sql")


def downgrade() -> None:
    # Jobs keep their rows (unique jobs lose their keys); the ticks go; the
    # functions of revision 0003 come back.
    run_sql_file("0004_scheduling_downgrade.sql")
