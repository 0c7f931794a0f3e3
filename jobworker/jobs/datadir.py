"""The data dir: its layout, its set-up at start-up, and its lock (one data dir, one jwsd).

    DATA/              0711, root's
      jwsd.lock        the lock, and the pid of the jwsd holding it
      jobs.db          the job records (`jobworker.jobs.store`)
      uids.json        each owner's host uid (`jobworker.jobs.uids`)
      jobs/            0711
        ID/            a job's dir (the sandbox makes it): output.log, status.json, work/

The job user reaches its work dir by exact path only (0711: traverse, never list);
everything else in the data dir stays root's.

One data dir, one jwsd: an exclusive lock on the data dir, held for the daemon's life.

Two daemons on one data dir destroy each other's jobs: the second one reads the
first one's records, reports its running jobs Terminated (lost), deletes their
directories, and removes their cgroups at its next start. So before anything in the
data dir is read or written, jwsd takes an exclusive flock(2) on `LOCK_NAME` in it
and writes its pid there; a second daemon is refused with one line naming that pid.

The kernel drops the lock with the process (a crash, a SIGKILL), so a successor
never finds a stale lock; the pid left in the file is then only history. The file
is opened O_CLOEXEC: no job or helper jwsd starts inherits (and so outlives it
holding) the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from pathlib import Path

import attrs

from jobworker.errors import SetupError
from jobworker.sandbox import HostSetup

#: The lock file in the data dir (its content: the holder's pid and a newline).
LOCK_NAME = "jwsd.lock"


@attrs.define(eq=False)
class DataDirLock:
    """The exclusive lock on one data dir; `acquire` takes it, `release` lets it go.

    path: the lock file.
    fd: the open file holding the lock; None once released.
    """

    path: Path
    fd: int | None

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Create `data_dir` if missing, lock it for this process alone and write our
        pid into the lock file. The caller releases it (`release`) when it is done
        with the data dir.

        Raises SetupError when another process holds the lock (naming its pid) or
        the data dir or lock file cannot be created ("not writable").
        """
        path = data_dir / LOCK_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            # The tracker's own words for a data dir it cannot write.
            raise SetupError(
                f"data dir {data_dir} is not writable ({exc.strerror}); pick another with "
                f"--data-dir"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in {errno.EWOULDBLOCK, errno.EAGAIN}:
                raise SetupError(
                    f"another jwsd ({'pid ' + holder if holder else 'its pid not yet written'}) "
                    f"uses data dir {data_dir}; stop it, or give this one another --data-dir"
                ) from None
            raise SetupError(f"cannot lock {path}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise SetupError(f"cannot write {path}: {exc.strerror}") from exc
        return cls(path, fd)

    def release(self) -> None:
        """Let the data dir go (the pid stays in the file: only the lock says who
        holds it). Idempotent."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _read_pid(fd: int) -> str:
    """The pid the holder wrote, as text; "" when it wrote none yet (or not a number)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


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


__all__ = ["LOCK_NAME", "DataDirLock", "jobs_dir", "prepare"]
