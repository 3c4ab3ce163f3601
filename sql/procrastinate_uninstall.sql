-- Removes the procrastinate bridge (docs/procrastinate.md): its triggers on
-- procrastinate_jobs and its schema. procrastinate keeps working untouched.
-- Mirrors of unfinished jobs are deleted (nothing would move them any more);
-- mirrors of finished jobs stay as history, and pgqueue's retention prunes
-- them like its own finished jobs.
DO $$
BEGIN
    IF to_regclass('procrastinate_jobs') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS pgqueue_mirror_inserted ON procrastinate_jobs;
        DROP TRIGGER IF EXISTS pgqueue_mirror_changed ON procrastinate_jobs;
        DROP TRIGGER IF EXISTS pgqueue_mirror_deleted ON procrastinate_jobs;
    END IF;
END $$;
DROP SCHEMA IF EXISTS pgqueue_procrastinate CASCADE;
DELETE FROM pgqueue.jobs WHERE executor = 'procrastinate' AND completed_at IS NULL;
