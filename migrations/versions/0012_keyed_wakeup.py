"""A keyed job that stops running wakes the workers (NOTIFY pgqueue_enqueue), so a
key's freed slot is claimed at once instead of at the next poll.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0012_keyed_wakeup.sql")


def downgrade() -> None:
    run_sql_file("0012_keyed_wakeup_downgrade.sql")
