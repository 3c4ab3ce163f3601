"""``pgqueue bench``: pgqueue beside PgQueuer, procrastinate (with and without
pgqueue's bridge) and raw SQL.

Not part of the library's API. The modules:

- ``_run``: the bench itself (scratch databases, the steps, the report and its targets);
- ``_systems``: each system under test behind one interface (enqueue, drain, latency);
- ``_app``: the pgqueue app the bench workers run; ``_probe``: timing inside workers;
- ``_sustained``: ``pgqueue bench --sustained N``;
- ``_scale``: ``pgqueue bench --scale 1,2,4,8``;
- ``_profile``: ``pgqueue bench --profile``, where one enqueue's and one idle claim's time goes;
- ``peer``: ``python -m pgqueue.bench.peer {procrastinate,pgqueuer} ...`` runs a peer's worker
  (``procrastinate --bridge``: with pgqueue's procrastinate bridge attached).
"""
