"""Concurrency keys: at most N running jobs per key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0005_concurrency.sql")


def downgrade() -> None:
    # Jobs keep their rows (keyed jobs lose their keys); the functions of
    # revision 0004 come back.
    run_sql_file("0005_concurrency_downgrade.sql")
