"""jobworker: run any Linux command for an authenticated user, under cgroup limits
and bubblewrap isolation, keep its output, and stream it to any number of followers.

The library's parts, from the bottom up:

- `jobworker.model`: what a job is asked to do (`JobSpec`, `Limits`) and snapshots of it (`JobStatus`);
- `jobworker.errors`: `JobWorkerError` and its kinds;
- `jobworker.sandbox`: cgroups (v1 and v2), the bubblewrap command line, the spawn trampoline;
- `jobworker.jobs.output_log`: `FileLog`, a job's output file for any number of followers;
- `jobworker.jobs.tracker`: `JobTracker`, which starts, stops, reports and streams jobs for their owners;
- `jobworker.server` and `jobworker.cli`: the gRPC daemon `jwsd` and the client `jws`.
"""

__version__ = "0.1.0"
