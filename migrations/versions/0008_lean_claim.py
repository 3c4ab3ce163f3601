"""A leaner claim when no rate limit and no concurrency key is in play.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0008_lean_claim.sql")


def downgrade() -> None:
    run_sql_file("0008_lean_claim_downgrade.sql")
