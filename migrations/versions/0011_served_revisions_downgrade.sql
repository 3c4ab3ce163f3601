-- pgqueue revision 0011, downgrade: back to 0010's catalog.
DROP TABLE pgqueue.served_revisions;
