"""The claim made of small pieces: which jobs may be claimed (claimable,
waiting), what claiming writes (lease), and a limited queue's window
(rate_used); the claim's keyed and rate-limited statements are one.

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
