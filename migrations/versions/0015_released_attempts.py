"""The attempts a job was handed back at shutdown in a column of their own
(released), which fail() reads instead of counting its history.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0015_released_attempts.sql")


def downgrade() -> None:
    run_sql_file("0015_released_attempts_downgrade.sql")
