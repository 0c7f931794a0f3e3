"""How a job's processes run: everything about them on the host (bubblewrap's
command line, the seccomp filter, the memfds, the status file, the output copier,
/proc, cgroups), behind a small API. The tracker imports this package only.

Made once at start-up:

- `HostSetup.check(job_user, data_dir=, binds=, host_uid=)`: the host checks (root,
  the programs, the job user, the seccomp program, the jobs' view of the host with
  the operator's binds, a trial sandbox as a host uid of jobs); `check_reachable(data_dir)`.
- `Sandbox.open(host, data_dir, ...)`: with the cgroup driver, the IO device and the
  settings every job gets (work dir and tmpfs sizes, the build's timeout);
  `cleanup_stale(keep)` at start-up, `close()` at exit.

A job's life:

- `Sandbox.user_on_host(uid)` (the job user as its owner's host uid),
  `Sandbox.check_limits`, `Sandbox.check_network`, `Sandbox.check_command`,
  `Sandbox.default_env`: before anything of the job exists.
- `Sandbox.prepare(JobRequest) -> StartingJob`: its dir, cgroup and files
  (`cgroup_dirs` for its record); `await StartingJob.launch() -> RunningJob`;
  `await StartingJob.discard()` undoes a start that failed or was cancelled.
- `RunningJob`: `await release()` (once, in the task that owns the job: an
  outbound job's command runs only once it has set up the job's network; at once
  for the other modes), `wait()`, `signal(signum)` (the command's process group, while its
  leader is in the job's cgroup), `kill()` (the whole cgroup), `usage()`,
  `workdir_bytes()`, `exit_status()`, `processes` and `cgroup_dirs` (for the job's
  record), then `await finish() -> Ending` (the bounded clean-up) or `let_go()`
  (leave it running for the next daemon).
- After a restart: `Sandbox.attach(..., Processes) -> RunningJob | None`, or
  `Sandbox.inspect(...) -> Remains` for a job that is not running: plain data,
  from which the caller decides how the job ended (`exit_status`).

Modules: `facade` (the above), `running` (`RunningJob`), `launch` (the trampoline,
the copier, the ready handshake), `process` (pidfd handles, /proc), `status`
(bubblewrap's status file, exit statuses), `program` (program resolution, exec
size), `bwrap` (the command line), `hostview` (what jobs see of the host), `seccomp`, `workdir`, `network` (a job's network namespace, pasta), `host` (the start-up
checks), `cgroups` (v1 and v2 behind one interface).
"""

from jobworker.sandbox.cgroups import CgroupDriver
from jobworker.sandbox.facade import (
    OUTPUT_NAME,
    STATUS_NAME,
    WORK_NAME,
    HostSetup,
    JobRequest,
    Remains,
    Sandbox,
    StartingJob,
)
from jobworker.sandbox.launch import SANDBOX_SETUP_TIMEOUT
from jobworker.sandbox.network import host_pings_through_pasta
from jobworker.sandbox.program import DEFAULT_PATH
from jobworker.sandbox.running import Ending, Processes, RunningJob
from jobworker.sandbox.status import exit_status

__all__ = [
    "DEFAULT_PATH",
    "OUTPUT_NAME",
    "SANDBOX_SETUP_TIMEOUT",
    "STATUS_NAME",
    "WORK_NAME",
    "CgroupDriver",
    "Ending",
    "HostSetup",
    "JobRequest",
    "Processes",
    "Remains",
    "RunningJob",
    "Sandbox",
    "StartingJob",
    "exit_status",
    "host_pings_through_pasta",
]
