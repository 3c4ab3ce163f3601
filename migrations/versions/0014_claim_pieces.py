"""The claim's due-job filter as small pieces (waiting, claimable, inlined by
PostgreSQL), and a limited queue's window count (rate_used) for the gauges.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0014_claim_pieces.sql")


def downgrade() -> None:
    run_sql_file("0014_claim_pieces_downgrade.sql")
