"""The export service (``ray-export serve``): exports submitted over HTTP run one after another (or up to
``--max-concurrent`` at once) in one long-lived Ray job, so that the stage workers stay warm between them.

- :mod:`.config`: the service's own configuration and the checks of what a request may ask for (bind and
  token, the exports root, the databases and images roots it allows); no Ray, no HTTP.
- :mod:`.queue`: the in-order queue (pure).
- :mod:`.runner`: the exports themselves (``run_export`` in a thread each, on the service's Ray).
- :mod:`.app`: the HTTP API (FastAPI), which only talks to the runner.
- :mod:`.server`: ``ray-export serve``: Ray, the runner and the HTTP server in one process, until stopped.
- :mod:`.client`: submitting to a running service (``ray-export export --service URL``, ``export(service=...)``).
"""
