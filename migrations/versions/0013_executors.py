"""Jobs another executor runs: mirror rows (executor, external_id) that pgqueue
never claims or rescues, cancelled and replayed through the executor's bridge.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0013_executors.sql")


def downgrade() -> None:
    run_sql_file("0013_executors_downgrade.sql")
