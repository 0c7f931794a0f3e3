"""The interface both cgroup versions implement, and the file helpers they share.

Cgroup control files are kernel I/O that never touches a disk: a write or read
is a few microseconds. They are done inline (synchronously) from async code on
purpose, as the style guide allows for I/O made cheap enough; only the wait for
a killed cgroup to empty (`JobCgroup.remove`) awaits.

Every failed write becomes a `SetupError` ("cannot write FILE: REASON"), or an
`InvalidRequestError` naming the limit when the kernel rejects the value
(EINVAL, ERANGE, ENODEV): that is a bad request, not a broken host.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import select
import signal
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import trio

from jobworker.errors import InvalidRequestError, SetupError
from jobworker.model import Limits, Usage

log = logging.getLogger("jobworker.cgroups")

#: How a cgroup directory is removed. The kernel's rmdir is the only real one; a
#: fake cgroupfs in a temp dir passes its own (its control files are plain files,
#: which the kernel would drop along with the directory).
Rmdir = Callable[[Path], None]

#: errnos by which the kernel refuses a limit's value rather than the write itself.
_REJECTED_VALUE = {errno.EINVAL, errno.ERANGE, errno.ENODEV, errno.EOVERFLOW}
#: errnos by which rmdir says the cgroup still has tasks or children.
_BUSY = {errno.EBUSY, errno.ENOTEMPTY}


class CgroupDriver(abc.ABC):
    """Makes, finds and removes job cgroups under one parent; `detect()` picks one.

    version: 1 or 2.
    parent: the directory holding every job's cgroup (on v1: the one in the
        memory hierarchy, as a representative; each hierarchy has its own).

    One daemon per parent: a driver locks its parent in every hierarchy when it is
    made (SetupError if another daemon holds one) and releases them in `close()`.

    The tree can be removed under a running daemon (rmdir of an empty parent, by an
    operator's script or a cgroup manager): `ensure_tree()` finds that, says so in
    the log, tells `on_tree_change` and builds the parents again (see
    docs/operations.md). `create()` calls it first, the daemon periodically.
    """

    version: int
    parent: Path
    #: Called with False when the tree is found gone, True once it is whole again
    #: (jwsd's health); None: nobody is told.
    on_tree_change: Callable[[bool], None] | None = None
    #: False from the moment a parent is found gone until the tree is rebuilt.
    tree_whole: bool = True
    #: The lock on each job parent (`lock_parents`), by directory.
    lock_fds: dict[Path, int]
    #: Which driver this is and why it was chosen (`detect.pick`), for the start-up line.
    chosen: str = ""

    async def connect(self) -> None:  # noqa: B027
        """Make what watching the jobs taken over needs, before they are supervised
        (the systemd driver: its bus connection). Bounded; never raises."""

    def restarting(self) -> bool:
        """Whether the service manager is restarting jwsd itself (`systemctl restart`),
        so that jobs are to be left running for the next jwsd: only the systemd driver,
        whose jobs live outside jwsd's unit, can tell."""
        return False

    @abc.abstractmethod
    def parent_dirs(self) -> tuple[Path, ...]:
        """The job parent in each hierarchy the driver writes (one on v2)."""

    @abc.abstractmethod
    def rebuild(self) -> None:
        """Make the job parents that are gone again, ready for jobs (cpuset, enabled
        controllers), and lock each anew (a removed directory's lock went with it).
        Raises SetupError when one cannot be made, or another daemon made and locked
        it meanwhile."""

    def ensure_tree(self) -> None:
        """Check that every job parent exists and is the directory we locked; rebuild
        the tree when one was removed (and perhaps made again by someone else).

        A stat and an fstat per hierarchy, done inline (cgroupfs never touches a disk). cgroupfs
        sends no inotify event for an rmdir (kernfs; checked on Linux 6.1), so the
        daemon calls this on a timer as well as before each start. Logs the removal
        (ERROR) and the rebuild (WARNING) once each, and tells `on_tree_change`.
        Raises SetupError when the rebuild fails; the next call tries again.
        """
        missing = unheld(self.lock_fds, self.parent_dirs())
        if not missing and self.tree_whole:
            return
        if self.tree_whole:
            self.tree_whole = False
            log.error(
                "cgroup %s was removed while jwsd runs (jwsd never removes it before it "
                "exits; someone else did); rebuilding the job cgroup tree",
                ", ".join(map(str, missing)),
            )
            self._tell_tree(False)
        try:
            self.rebuild()
        except SetupError as exc:
            log.error("cannot rebuild the job cgroup tree: %s; job starts fail until it is", exc)
            raise
        self.tree_whole = True
        log.warning("rebuilt the job cgroup tree %s; jobs start again", self.parent)
        self._tell_tree(True)

    def _tell_tree(self, whole: bool) -> None:
        if self.on_tree_change is not None:
            self.on_tree_change(whole)

    @abc.abstractmethod
    def create(
        self,
        job_id: str,
        limits: Limits,
        io_device: tuple[int, int] | None,
        owner: str | None = None,
    ) -> JobCgroup:
        """Make the job's cgroup(s) under the parent and write `limits` (None fields:
        no limit). `io_device` is the (major, minor) of the disk the IO limits apply
        to; it is required when `limits` has an IO limit and ignored otherwise.
        `owner`: the job goes in its owner's group (`owner_group`), made when
        missing; None: directly under the parent.

        Raises InvalidRequestError for a bad job id, a missing io_device or a value
        the kernel rejects; SetupError when the host refuses (permissions, a missing
        controller, an existing cgroup of that name). Either way nothing is left
        behind. The caller owns the returned cgroup: `kill_all()` then `remove()`.
        """

    @abc.abstractmethod
    def attach(self, job_id: str, owner: str | None = None) -> JobCgroup | None:
        """The existing cgroup(s) of a job an earlier daemon started in `owner`'s group
        (its limits as they were written), or None when they are gone. Raises
        InvalidRequestError for a bad job id."""

    @abc.abstractmethod
    def cleanup_stale(self, keep: Collection[str] = ()) -> list[str]:
        """Kill every process in, and remove, every job cgroup under the parent and
        in its owner groups (left by an earlier run), but those named in `keep` (jobs
        being taken over), and the groups left empty. Returns the job names removed.

        Blocks for at most a few seconds waiting for the killed processes to exit;
        it runs once, at start-up, before anything else is served. Raises
        SetupError when a cgroup cannot be emptied and removed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Remove the (now empty) parent dir(s) if possible, and release the parent's
        lock; never raises for a busy or missing dir. Idempotent."""


class JobCgroup(abc.ABC):
    """One job's cgroup, in each hierarchy the driver uses.

    name: the job's cgroup name (the job id).
    procs_files: the cgroup.procs file of each hierarchy; the job's trampoline
        writes its own pid to each before it execs the command, so everything the
        command starts is born inside.
    holds_start / place: see below.
    """

    name: str
    procs_files: tuple[Path, ...]
    rmdir: Rmdir
    #: Whether the trampoline must wait for `place` before it enters the cgroup (the
    #: systemd driver's: the cgroup exists only once systemd has the processes).
    holds_start: bool = False

    async def place(self, supervisor: int, copier: int) -> None:  # noqa: B027
        """Put the held `supervisor` (the trampoline) and `copier` in the job's cgroup
        and write its limits, before the trampoline goes on (`holds_start` only)."""

    async def stopped_outside(self) -> str | None:
        """Asked once the job's processes are gone: why they were stopped by someone
        other than jobworker (an operator's `systemctl stop` of the systemd driver's
        scope), or None. Bounded; never raises."""
        await trio.lowlevel.checkpoint()
        return None

    def pids(self) -> list[int]:
        """Every pid in the job's cgroup (the union over hierarchies), sorted; [] once
        the cgroup is gone."""
        found: set[int] = set()
        for procs in self.procs_files:
            found.update(read_pids(procs))
        return sorted(found)

    @abc.abstractmethod
    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, including ones forked meanwhile.

        Returns once the signal is sent; the processes leave the cgroup a moment
        later (see `remove`). Idempotent; a removed cgroup is fine. Raises
        SetupError if a control file cannot be written.
        """

    @abc.abstractmethod
    def usage(self) -> Usage:
        """CPU time, peak memory and OOM kills so far. Raises SetupError when a
        counter cannot be read (the cgroup was removed)."""

    @abc.abstractmethod
    def directories(self) -> tuple[Path, ...]:
        """The job's cgroup directory in each hierarchy."""

    # A timeout parameter, not a cancel scope: running out is an error (SetupError)
    # that names the busy cgroup, not a cancellation of the caller.
    async def remove(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Remove the job's cgroup directory in every hierarchy; missing ones are fine.

        After `kill_all()` the last tasks leave the cgroup only when they have
        finished exiting, and until then rmdir fails with EBUSY. Cgroup v1 gives
        no event for "empty" (its notify_on_release runs a usermode helper), so
        this retries with a short backoff for at most `timeout` seconds.

        Raises SetupError when a directory is still busy after `timeout`.
        """
        deadline = trio.current_time() + timeout
        for directory in self.directories():
            delay = 0.002
            while not self._try_rmdir(directory):
                if trio.current_time() + delay > deadline:
                    raise SetupError(
                        f"cannot remove cgroup {directory}: it still has processes after "
                        f"{timeout:g} s; kill them (kill_all) and try again"
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._remove_owner_groups()

    def remove_blocking(self, timeout: float = 5.0) -> None:
        """`remove` for synchronous start-up code: waits on the exit of each process
        still inside (pidfd poll), not on a timer. Raises SetupError as `remove`."""
        deadline = time.monotonic() + timeout
        for directory in self.directories():
            while not self._try_rmdir(directory):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SetupError(
                        f"cannot remove cgroup {directory}: it still has processes after "
                        f"{timeout:g} s; kill them and try again"
                    )
                self.kill_all()
                wait_for_exit(read_pids(directory / "cgroup.procs"), min(left, 0.1))
        self._remove_owner_groups()

    def _try_rmdir(self, directory: Path) -> bool:
        return try_rmdir(directory, self.rmdir)

    def _remove_owner_groups(self) -> None:
        # The owner's last job takes its group along; one with other jobs is busy
        # and stays. (Sync, on the daemon's one thread: no create runs in between.)
        for directory in self.directories():
            if directory.parent.name.startswith(OWNER_GROUP_PREFIX):
                self._try_rmdir(directory.parent)


#: Seconds between the daemon's checks that its cgroup tree is still there.
TREE_CHECK_INTERVAL = 2.0


async def keep_tree(driver: CgroupDriver, interval: float = TREE_CHECK_INTERVAL) -> None:
    """Run `driver.ensure_tree()` every `interval` seconds until cancelled, so that a
    tree removed while no job starts is rebuilt (and health reports it) all the same:
    cgroupfs has no event for it. A failed rebuild is logged there and tried again."""
    while True:
        await trio.sleep(interval)
        with contextlib.suppress(SetupError):
            driver.ensure_tree()


# ---- helpers shared by v1 and v2 -------------------------------------------------------------

#: Every owner group's name starts with this (job ids never do: they are UUIDs).
OWNER_GROUP_PREFIX = "user-"

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def owner_group(owner: str) -> str:
    """The directory, under the job parent, that holds one owner's jobs.

    Why a level per owner: the kernel shares CPU among sibling cgroups by weight, so
    with every job a sibling, an owner running 30 busy jobs got 30 shares to another
    owner's one, and even that one's sandbox was slow to build. Per owner, each
    owner's jobs together get one share (as systemd's user slices do), whatever their
    count; limits stay per job. A name that is not plain becomes "_" and its hash
    (no plain name starts with "_").
    """
    if _PLAIN_NAME.fullmatch(owner):
        return OWNER_GROUP_PREFIX + owner
    return OWNER_GROUP_PREFIX + "_" + hashlib.sha256(owner.encode()).hexdigest()[:32]


def write_value(file: Path, value: str | int, *, what: str | None = None) -> None:
    """Write `value` to a control file in one write(2), as the kernel expects.

    what: the limit this sets (e.g. "memory limit"), named in the error when the
        kernel rejects the value; None for files that are not a user's limit.
    Raises InvalidRequestError (value rejected, `what` given) or SetupError.
    """
    data = str(value).encode()
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        if what is not None and exc.errno in _REJECTED_VALUE:
            raise InvalidRequestError(
                f"the kernel refused the {what} {value!s} ({exc.strerror}); try another value"
            ) from exc
        if exc.errno in {errno.EACCES, errno.ENOENT} and file.parent.is_dir() and not file.exists():
            # cgroupfs refuses to create files: EACCES, even for root, means "no such file".
            raise SetupError(
                f"cannot write {file}: there is no such control file; is its controller "
                f"enabled for this cgroup?"
            ) from exc
        raise SetupError(f"cannot write {file}: {exc.strerror}") from exc


def read_text(file: Path) -> str:
    """The contents of a control file; raises SetupError when it cannot be read.

    Plain os calls, not `Path.read_text`: a live status reads three of these per
    call, and the buffered text layer costs more than the read itself
    (docs/performance.md).
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pieces = []
            while piece := os.read(fd, 8192):  # one read, for the files read here
                pieces.append(piece)
            return b"".join(pieces).decode()
        finally:
            os.close(fd)
    except OSError as exc:
        raise SetupError(f"cannot read {file}: {exc.strerror}") from exc


def read_int(file: Path) -> int:
    """A control file holding one integer; raises SetupError when unreadable or not a number."""
    text = read_text(file).strip()
    try:
        return int(text)
    except ValueError:
        raise SetupError(f"cannot read {file}: {text!r} is not a number") from None


def read_keyed(file: Path, key: str) -> int:
    """The value of `key` in a flat-keyed file ("key value" lines, as memory.events or
    cpu.stat); 0 when the key is absent (older kernels). Raises SetupError as read_text."""
    for line in read_text(file).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                break
    return 0


def read_pids(procs: Path) -> list[int]:
    """The pids listed in a cgroup.procs file; [] when the cgroup does not exist."""
    try:
        text = procs.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SetupError(f"cannot read {procs}: {exc.strerror}") from exc
    return [int(line) for line in text.split()]


def kill_until_empty(list_pids: Callable[[], Iterable[int]], *, max_rounds: int = 1000) -> None:
    """SIGKILL every pid `list_pids()` gives, again and again, until it lists no pid
    not yet killed.

    Why the loop converges: a process with SIGKILL pending can no longer fork (the
    kernel aborts a fork in progress when a fatal signal is pending), so only
    processes forked before their parent was killed can show up in a later round.
    The caller freezes the cgroup first where it can, so frozen tasks cannot fork
    or exit and the pids read cannot be reused meanwhile.
    """
    killed: set[int] = set()
    for _ in range(max_rounds):
        fresh = set(list_pids()) - killed
        if not fresh:
            return
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):  # already gone: nothing to kill
                os.kill(pid, signal.SIGKILL)
        killed |= fresh
    raise SetupError(
        f"processes kept appearing after {max_rounds} rounds of SIGKILL; is the cgroup's "
        f"pids limit missing?"
    )


def wait_for_exit(pids: Iterable[int], timeout: float) -> None:
    """Block until every pid has exited or `timeout` seconds pass, woken by the exit
    itself: a pidfd becomes readable when its process exits (Linux 5.3+). Pids
    that are already gone are skipped."""
    fds = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + timeout
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = len(fds)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending -= 1
    finally:
        for fd in fds:
            os.close(fd)


def try_rmdir(directory: Path, rmdir: Rmdir) -> bool:
    """rmdir a cgroup directory: True when it is gone (or never existed), False
    while the kernel says it is busy (tasks or child cgroups left). Raises
    SetupError for anything else."""
    try:
        rmdir(directory)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise SetupError(f"cannot remove cgroup {directory}: {exc.strerror}") from exc
    return True


def check_job_id(job_id: str) -> None:
    """A job id becomes a directory name: refuse anything that is not one plain name."""
    if not job_id or job_id in {".", ".."} or "/" in job_id or "\0" in job_id:
        raise InvalidRequestError(f"bad job id {job_id!r} for a cgroup name: use a plain name")


def check_io_device(limits: Limits, io_device: tuple[int, int] | None) -> None:
    """IO limits are per block device: refuse them when the caller knows no device."""
    if limits.has_io and io_device is None:
        raise InvalidRequestError(
            "io limits need the data dir on a block device, and this host's is not; "
            "drop the io limits or move the data dir to a disk"
        )


def make_dir(directory: Path) -> None:
    """mkdir one cgroup; SetupError when it exists already or the kernel refuses."""
    try:
        directory.mkdir()
    except FileExistsError as exc:
        raise SetupError(
            f"cgroup {directory} exists already; remove it or pick another job id"
        ) from exc
    except OSError as exc:
        raise SetupError(
            f"cannot create cgroup {directory}: {exc.strerror}; jwsd must run as root"
        ) from exc


def ensure_dir(directory: Path) -> None:
    """mkdir one cgroup unless it exists; SetupError when the kernel refuses."""
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise SetupError(
            f"cannot create cgroup {directory}: {exc.strerror}; jwsd must run as root"
        ) from exc


def lock_parent(parent: Path) -> int:
    """Claim the job parent `parent` for this daemon alone: an exclusive flock(2) on
    the directory, held until `unlock` (or the process's death, which a crashed
    daemon's successor relies on). Returns the fd holding the lock.

    Two daemons sharing a parent would sweep (kill) each other's jobs at start-up
    and remove each other's parent at exit. Raises SetupError when another process
    holds the lock.
    """
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"cannot open cgroup {parent}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in {errno.EWOULDBLOCK, errno.EAGAIN}:
            raise SetupError(
                f"another jwsd owns cgroup {parent}; stop it, or give this one another "
                f"--cgroup-name"
            ) from None
        raise SetupError(f"cannot lock cgroup {parent}: {exc.strerror}") from exc
    return fd


def unlock(fd: int | None) -> None:
    """Release a lock taken by `lock_parent`; None (never locked) is fine."""
    if fd is not None:
        os.close(fd)


def lock_parents(parents: Iterable[Path]) -> dict[Path, int]:
    """`lock_parent` of each directory (one per hierarchy), all or none: when one is
    held by another daemon, those taken are released and SetupError names the one.

    Why every hierarchy: on a v1 host whose hierarchies are split (memory elsewhere
    than cpu and pids), two daemons in different memory cgroups share `cpu/<name>`;
    a lock on one hierarchy let both run, and one removed the other's parent.
    """
    fds: dict[Path, int] = {}
    try:
        for parent in dict.fromkeys(parents):
            fds[parent] = lock_parent(parent)
    except BaseException:
        unlock_all(fds)
        raise
    return fds


def unlock_all(fds: dict[Path, int]) -> None:
    """Release every lock `lock_parents` took, and forget them."""
    for fd in fds.values():
        unlock(fd)
    fds.clear()


def unheld(fds: dict[Path, int], parents: Iterable[Path]) -> list[Path]:
    """The parents whose directory is gone, or is not the one our lock is on (it was
    removed and made again), or that we hold no lock on."""
    found = []
    for parent in dict.fromkeys(parents):
        fd = fds.get(parent)
        try:
            same = fd is not None and os.fstat(fd).st_ino == os.stat(parent).st_ino
        except OSError:
            same = False
        if not same:
            found.append(parent)
    return found


def relock(fds: dict[Path, int], parent: Path) -> None:
    """Lock a rebuilt `parent` anew: the old lock was on the removed directory."""
    unlock(fds.pop(parent, None))
    fds[parent] = lock_parent(parent)
