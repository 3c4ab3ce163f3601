-- pgqueue revision 0012: a keyed job that stops running wakes the workers.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- A claim takes at most concurrency_limit running jobs per concurrency key.
-- When one of them ends (completed, failed, retrying, released, rescued,
-- cancelled), its key has a free slot, but nothing told the workers: a claim
-- that had come back short waited for the next enqueue or poll, so a key
-- with a backlog advanced about once per poll interval. jobs_changed now
-- announces such a job on pgqueue_enqueue with its queue, as it does a job
-- pending again; NOTIFY folds repeats within a transaction, so a completion
-- of many jobs of one queue sends one.
--
-- Additive: the previous releases keep working against it.
CREATE OR REPLACE FUNCTION pgqueue.jobs_changed()
RETURNS trigger LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d record;
BEGIN
    PERFORM pg_notify('pgqueue_job', concat(
                '{"id":', n.id, ',"status":"', n.status, '","progress":', n.progress,
                ',"queue":', to_json(n.queue),
                ',"owner":', COALESCE(to_json(n.owner)::text, 'null'),
                ',"batch_id":', COALESCE(n.batch_id::text, 'null'),
                ',"message":', COALESCE(to_json(left(n.progress_message, 200))::text, 'null'),
                '}')),
            CASE WHEN n.status = 'cancelled' AND o.status = 'running'
                 THEN pg_notify('pgqueue_cancel', n.id::text) END,
            CASE WHEN (n.status = 'pending' AND o.status <> 'pending')
                   OR (o.status = 'running' AND n.status <> 'running'
                       AND n.concurrency_key IS NOT NULL)
                 THEN pg_notify('pgqueue_enqueue', n.queue) END
       FROM old_jobs o JOIN new_jobs n ON n.id = o.id
      WHERE o.status <> n.status OR o.progress <> n.progress
         OR o.progress_message IS DISTINCT FROM n.progress_message;
    FOR d IN
        SELECT o.batch_id, array_agg(o.status) AS was, array_agg(n.status) AS now,
               array_agg(n.id) AS ids
          FROM old_jobs o JOIN new_jobs n ON n.id = o.id
         WHERE o.batch_id IS NOT NULL AND o.status <> n.status
         GROUP BY o.batch_id
         ORDER BY o.batch_id
    LOOP
        PERFORM pgqueue.batch_apply(d.batch_id, d.was, d.now, d.ids);
    END LOOP;
    RETURN NULL;
END $$;

INSERT INTO pgqueue.served_revisions (revision) VALUES ('0012');
