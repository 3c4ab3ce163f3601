"""Plan modes for the hot functions: claim planned once per session, complete_many
and heartbeat for each call by primary-key probes; none reads the jobs table whole.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0010_plan_modes.sql")


def downgrade() -> None:
    run_sql_file("0010_plan_modes_downgrade.sql")
