"""The releases this schema serves: a table of library head revisions that work
against it, so a release can tell a newer schema it still runs on.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0011_served_revisions.sql")


def downgrade() -> None:
    run_sql_file("0011_served_revisions_downgrade.sql")
