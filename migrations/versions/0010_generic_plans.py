"""Generic plans for claim and complete_many: planned once per session, not on every call.

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
    run_sql_file("0010_generic_plans.sql")


def downgrade() -> None:
    run_sql_file("0010_generic_plans_downgrade.sql")
