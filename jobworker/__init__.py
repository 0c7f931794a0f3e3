"""jobworker: run any Linux command for an authenticated user, under cgroup limits
and bubblewrap isolation, keep its output, and stream it to any number of followers.

The library's parts, from the bottom up:

- `jobworker.model`: what a job is asked to do (`JobSpec`, `Limits`) and snapshots of it (`JobStatus`);
- `jobworker.errors`: `JobWorkerError` and its kinds;
- `jobworker.sandbox`: cgroups (v1 and v2), the bubblewrap command line, the spawn trampoline;
- `jobworker.jobs`: `JobTracker`, which starts, stops, reports and streams jobs for their owners,
  with their records, output files and retention;
- `jobworker.transport`: purerpc made safe (TLS identity, cancellation, errors to status codes);
- `jobworker.client`: the Python client;
- `jobworker.server` and `jobworker.cli`: the gRPC daemon `jwsd` and the client `jws`.
"""

__version__ = "0.1.0"
