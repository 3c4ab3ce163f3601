"""pgqueue transition functions and notification triggers, v1.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from pgqueue.migrations.versions import run_sql, run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_functions.sql")


def downgrade() -> None:
    # Tables and their rows stay; only the code is removed.
    run_sql(
        """
        DROP TRIGGER jobs_notify_enqueued ON pgqueue.jobs;
        DROP TRIGGER jobs_notify_changed ON pgqueue.jobs;
        DO $$
        DECLARE f regprocedure;
        BEGIN
            FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                     JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'pgqueue'
            LOOP
                EXECUTE 'DROP FUNCTION ' || f;
            END LOOP;
        END $$;
        """
    )
