"""Rate limits per queue: at most N jobs started per period.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0006_rate_limits.sql")


def downgrade() -> None:
    # Queues keep their rows and paused flags and lose their rate limits; the
    # claim of revision 0005 comes back.
    run_sql_file("0006_rate_limits_downgrade.sql")
