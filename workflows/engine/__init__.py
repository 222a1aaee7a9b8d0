"""The durable workflow engine: its parts, in layers that import only downwards.

::

    lifecycle    Engine: start, resume, admit, cancel, report; claims and heartbeats
    execution    running steps: submit what is ready, commit what finished, continue
    tool_runs    YAML tool and template steps     waits   durable sleeps and events
    host         what those step kinds need from the engine (a protocol)
    loop         the engine thread: its queue, timers and one journal commit per turn
    runstate     the in-memory state of a run      outputs   reading the journal
    step         what runs in a Ray worker         results   refs for ``*_async``
    graph        the flat, picklable step graph    completions   the Ray watcher
    storage  serde  liveness  limits               the journal, pickling, owners, bounds

A module imports only modules of lower rows (``tests/unit/test_engine_layers.py`` checks
it). The public face is :mod:`workflows.api`; the node uses :class:`lifecycle.Engine`.
"""
