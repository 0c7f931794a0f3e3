"""The data dir: its layout and its set-up at start-up.

    DATA/              0711, root's
      jobs.db          the job records (`jobworker.jobs.store`)
      jobs/            0711
        ID/            a job's dir (the sandbox makes it): output.log, status.json, work/

The job user reaches its work dir by exact path only (0711: traverse, never list);
everything else in the data dir stays root's.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from jobworker.errors import SetupError
from jobworker.sandbox import HostSetup


def jobs_dir(data_dir: Path) -> Path:
    """Where the job dirs live."""
    return data_dir / "jobs"


def prepare(data_dir: Path, host: HostSetup) -> None:
    """Make the data dir and its jobs dir (0711), check they are writable and that the
    job user can reach its work dirs there; raise SetupError saying what to do."""
    jobs = jobs_dir(data_dir)
    try:
        jobs.mkdir(parents=True, exist_ok=True)
        for directory in (data_dir, jobs):
            os.chmod(directory, 0o711)
        probe = jobs / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SetupError(
            f"data dir {data_dir} is not writable ({exc.strerror}); pick another with --data-dir"
        ) from exc
    host.check_reachable(data_dir)


__all__ = ["jobs_dir", "prepare"]
