"""A cheaper hot path: plan-cached completion and heartbeat, one statement
trigger per UPDATE, claims by primary key, attempts without a per-row
foreign-key check.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0007_hot_path.sql")


def downgrade() -> None:
    # The functions and triggers of 0006 come back, and with them the foreign
    # key of attempts (jobs_deleted left no orphans for it to refuse).
    run_sql_file("0007_hot_path_downgrade.sql")
