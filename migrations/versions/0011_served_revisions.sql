-- pgqueue revision 0011: the releases this schema serves.
-- Frozen: never edited once released; later changes go in a new revision.
--
-- During a rolling deploy the database is migrated first, while processes of
-- the previous release still run. Each release knows only its own head
-- revision, not the revisions after it, so the schema says which releases it
-- serves: one row per library head revision whose enqueue, worker and API
-- work against it. A revision that only adds keeps its predecessors' rows; a
-- revision that drops what an older release calls removes that release's row.
-- /readyz reads it (docs/operations.md, "Upgrades during a rolling deploy").
CREATE TABLE pgqueue.served_revisions (
    revision text PRIMARY KEY
);
INSERT INTO pgqueue.served_revisions (revision) VALUES ('0010'), ('0011');
