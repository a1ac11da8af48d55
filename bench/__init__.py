"""``make bench``: the worker's throughput beside Celery's no-op ceiling and the textbook recipe.

Modules: ``harness`` (child processes, CPU and memory of a process tree), ``services`` (Redis,
the FunnelFox simulator, the webhook receiver), ``measure`` (what a run found), ``contestants``
(the three ways of doing the job), ``report`` (the table and ``bench/RESULTS.md``). ``noop`` and
``textbook`` are the Celery apps of the two references.
"""
