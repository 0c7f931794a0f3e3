"""`TrackerConfig`: every setting of the job tracker, with its default, in one place.

jwsd's flags (`jobworker.cli.jwsd`) show these defaults and fill these fields;
`DaemonConfig` (`jobworker.server.daemon`) holds one of these as its `jobs`
section; tests and benchmarks make one with the fields they change. A new
setting is a field here and a flag in jwsd.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from jobworker.jobs.disk import DiskSetting
from jobworker.jobs.retention import RetentionPolicy
from jobworker.jobs.uids import DEFAULT_RANGE, UidRange
from jobworker.model import Limits
from jobworker.sandbox.hostview import JobBind

#: Where jwsd keeps its job records, output and work dirs (`jwsd --data-dir`).
DEFAULT_DATA_DIR = Path("/var/lib/jobworker")
#: Limits for jobs that ask for none (`jwsd --default-limits`): one core, 512 MiB of
#: memory, 256 tasks (a fork bomb stays a small fraction of the host's pid_max).
DEFAULT_LIMITS = Limits(cpu=1.0, memory=512 << 20, pids=256)
#: The size of each of a job's writable tmpfs, /tmp and /dev/shm (`jwsd --tmpfs-size`).
DEFAULT_TMPFS_SIZE = 64 << 20
#: The defaults of the quotas (`jwsd --max-running-per-user`, `--max-output`, `--workdir-size`).
DEFAULT_MAX_RUNNING = 32
DEFAULT_MAX_OUTPUT = 1 << 30
DEFAULT_WORKDIR_SIZE = 1 << 30
#: The most record bytes (argv, env names, workdir) one user's jobs hold in the store
#: (`jwsd --max-record-bytes-per-user`): 64 one-MiB commands; jobs.db stays bounded.
DEFAULT_MAX_RECORD_BYTES = 64 << 20
#: How long a job's sandbox may take to build before its start fails (`--sandbox-timeout`).
DEFAULT_SANDBOX_TIMEOUT = 30.0


@attrs.frozen
class TrackerConfig:
    """How the tracker runs jobs; every default is the one `jwsd --help` shows.

    data_dir: job records, output files and work dirs (created if missing; must be
        writable). Its block device is the one IO limits apply to.
    job_user: the account jobs see themselves as; "root" is an explicit opt-in (jobs
        then run as root on the host too).
    job_uids: the host uids jobs run as, one per owner (`jobworker.jobs.uids`).
    default_limits: limits applied where a request sets none.
    max_limits: the most a request may ask for; `None` fields are unbounded.
    allow_host_network: whether a job may share the host's network namespace.
    stop_grace: seconds between SIGTERM and SIGKILL when a stop gives none.
    tmpfs_size: bytes each of a job's writable tmpfs (/tmp, /dev/shm) may hold, at
        most the job's memory limit (its pages are charged to the job's memory
        cgroup); `None`: only the memory limit bounds them.
    cgroup_name: the name of the parent cgroup of all jobs (in jwsd's subtree).
    cgroup_parent: the cgroup subtree jobs go in (a cgroup path); `None`: jwsd's
        own cgroup (see `sandbox.cgroups.detect`).
    max_running_per_user: the most jobs an owner may have not yet Terminated
        (`None`: no limit).
    max_record_bytes_per_user: the most bytes of job records (argv, environment
        names, working directory: `jobworker.jobs.record_quota`) an owner's jobs,
        running and kept, may hold (`None`: no limit).
    max_output: the most output a job keeps; a request may ask for less (its
        `Limits.output`), never more (`None`: no cap).
    max_disk_per_user: the most disk one owner's jobs' output may hold, running and
        kept (`jobworker.jobs.disk`): bytes, "auto" (a quarter of the data dir's file
        system, at least 1 GiB, at most all of it), or `None` (no quota).
    workdir_size: the size of each job's tmpfs work dir (`None`: a plain directory
        on the data dir's file system, unbounded).
    sandbox_timeout: seconds a job's sandbox may take to build before its start fails.
    retention: when finished jobs are forgotten (`jobworker.jobs.retention`).
    job_binds: host paths every job sees besides the allow-list (`jwsd --job-bind`).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    job_user: str = "nobody"
    job_uids: UidRange = DEFAULT_RANGE
    default_limits: Limits = DEFAULT_LIMITS
    max_limits: Limits = attrs.Factory(Limits)
    allow_host_network: bool = False
    stop_grace: float = 5.0
    tmpfs_size: int | None = DEFAULT_TMPFS_SIZE
    cgroup_name: str = "jobworker"
    cgroup_parent: str | None = None
    max_running_per_user: int | None = DEFAULT_MAX_RUNNING
    max_record_bytes_per_user: int | None = DEFAULT_MAX_RECORD_BYTES
    max_output: int | None = DEFAULT_MAX_OUTPUT
    max_disk_per_user: DiskSetting = "auto"
    workdir_size: int | None = DEFAULT_WORKDIR_SIZE
    sandbox_timeout: float = DEFAULT_SANDBOX_TIMEOUT
    retention: RetentionPolicy = attrs.Factory(RetentionPolicy)
    job_binds: tuple[JobBind, ...] = ()


def field_names(cls: type) -> frozenset[str]:
    """The names of an attrs class's fields (to route settings to their section)."""
    return frozenset(field.name for field in attrs.fields(cls))


__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_MAX_RUNNING",
    "DEFAULT_SANDBOX_TIMEOUT",
    "DEFAULT_TMPFS_SIZE",
    "DEFAULT_WORKDIR_SIZE",
    "TrackerConfig",
    "field_names",
]
