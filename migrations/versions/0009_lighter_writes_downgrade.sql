-- pgqueue revision 0009, downgrade: back to revision 0008.
-- Frozen with 0009_lighter_writes.sql.

DROP FUNCTION pgqueue.enqueue_bulk(text, jsonb[], text, integer, timestamptz, integer, interval,
                                   text, jsonb, text[], text, interval, text[], integer);

-- Runs once per UPDATE statement on jobs, with the statement's old and new
-- rows. It announces each job whose state or progress changed on
-- pgqueue_job (and a running job's cancel on pgqueue_cancel, a job pending
-- again on pgqueue_enqueue), then applies batch children's moves batch by
-- batch in id order (so concurrent statements lock batch rows in the same
-- order and never deadlock on them). One statement-level trigger instead of a
-- row trigger per job: a claim or completion of 100 jobs runs it once.
CREATE OR REPLACE FUNCTION pgqueue.jobs_changed()
RETURNS trigger LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d record;
BEGIN
    PERFORM pg_notify('pgqueue_job', json_build_object(
                'id', n.id, 'status', n.status, 'progress', n.progress, 'queue', n.queue,
                'owner', n.owner, 'batch_id', n.batch_id,
                'message', left(n.progress_message, 200))::text),
            CASE WHEN n.status = 'cancelled' AND o.status = 'running'
                 THEN pg_notify('pgqueue_cancel', n.id::text) END,
            CASE WHEN n.status = 'pending' AND o.status <> 'pending'
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

