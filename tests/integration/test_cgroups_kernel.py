"""The cgroup layer on the real kernel (root): limits checked by their effect on real
processes, kill_all on trees that resist, and nothing left behind.

Processes enter a job's cgroup the way jobs do: a `sh` trampoline writes its own
pid to every cgroup.procs file, then execs the command.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from jobworker.errors import InvalidRequestError, SetupError
from jobworker.model import Limits
from jobworker.sandbox.cgroups import (
    CgroupDriver,
    JobCgroup,
    V2Driver,
    block_device_of,
    detect,
)
from jobworker.sandbox.cgroups.detect import read_mounts, read_own_cgroups
from tests.conftest import require_root
from tests.support.cgroupfs import cgroups_named
from tests.support.names import unique_name
from tests.support.waiting import eventually


@pytest.fixture
def driver() -> Iterator[CgroupDriver]:
    """The host's driver under a unique parent name; removes everything on the way out."""
    require_root()
    driver = detect(name=unique_name())
    try:
        yield driver
    finally:
        driver.cleanup_stale()
        driver.close()
        assert not cgroups_named(driver.parent.name), "parent left behind"


async def start_in(cgroup: JobCgroup, command: str) -> trio.Process:
    """Start `sh -c command` inside the job's cgroup through a trampoline, and wait
    until the kernel lists it there (or it has already ended)."""
    enter = "".join(f"echo $$ > {shlex.quote(str(f))} || exit 99; " for f in cgroup.procs_files)
    proc = await trio.lowlevel.open_process(
        ["sh", "-c", f"{enter}exec sh -c {shlex.quote(command)}"]
    )
    # A quick command may be gone already; 99 says the trampoline could not enter.
    await eventually(
        lambda: proc.pid in cgroup.pids() or proc.poll() is not None,
        timeout=5,
        what="the command is in its cgroup",
    )
    assert proc.returncode != 99, "the trampoline could not enter the cgroup"
    return proc


async def finish(cgroup: JobCgroup, *procs: trio.Process) -> None:
    """Kill the job and reap our children; used in finally blocks."""
    cgroup.kill_all()
    for proc in procs:
        proc.kill()
        await proc.wait()
    await cgroup.remove()


async def wait_until_empty(cgroup: JobCgroup) -> None:
    await eventually(lambda: not cgroup.pids(), timeout=5, what="the cgroup is empty")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def sessions_of_their_own(cgroup: JobCgroup, leader: int) -> list[int]:
    """The job's processes (other than `leader`) that lead their own session."""
    found = []
    for pid in cgroup.pids():
        try:
            if pid != leader and os.getsid(pid) == pid:
                found.append(pid)
        except ProcessLookupError:
            continue
    return found


# ---- limits by their effect ----------------------------------------------------------------


async def test_memory_limit_gets_a_hog_oom_killed_and_counted(driver: CgroupDriver) -> None:
    require_root()
    cgroup = driver.create("mem", Limits(memory=32 << 20), None)
    proc = await start_in(cgroup, "exec tail /dev/zero")
    try:
        with trio.fail_after(20):
            assert await proc.wait() == -9
        usage = cgroup.usage()
        assert usage.oom_kills >= 1
        assert 16 << 20 <= usage.peak_memory <= (32 << 20) + (1 << 20)
    finally:
        await finish(cgroup, proc)
    assert not any(d.exists() for d in cgroup.directories())


async def test_cpu_limit_of_a_fifth_core_holds_a_busy_loop_to_about_a_fifth(
    driver: CgroupDriver,
) -> None:
    require_root()
    cgroup = driver.create("cpu", Limits(cpu=0.2), None)
    proc = await start_in(cgroup, "while :; do :; done")
    try:
        start_cpu, start = cgroup.usage().cpu_ns, time.monotonic()
        await trio.sleep(2)  # the behaviour under test: CPU used over a wall-clock span
        used = (cgroup.usage().cpu_ns - start_cpu) / 1e9
        elapsed = time.monotonic() - start
        print(f"cpu=0.2: {used:.3f} s of CPU in {elapsed:.3f} s")
        assert 0.25 * elapsed / 2 <= used <= 0.6 * elapsed / 2
    finally:
        await finish(cgroup, proc)


async def test_pids_limit_stops_a_fork_loop_at_the_limit(
    driver: CgroupDriver, tmp_path: Path
) -> None:
    require_root()
    cgroup = driver.create("pids", Limits(pids=6), None)
    errors = tmp_path / "stderr"
    errors.touch()
    proc = await start_in(cgroup, f"exec 2>{errors}; while :; do sleep 100 & done")
    try:
        most = 0
        with trio.fail_after(10):
            while "fork" not in errors.read_text().lower():  # dash: "Cannot fork"
                most = max(most, len(cgroup.pids()))
                await trio.sleep(0.001)  # the behaviour under test: sampling the count as it grows
        # the shell (if the failed fork did not end it) and five sleeps: at the limit, not past it
        assert max(most, len(cgroup.pids())) <= 6
        assert len(cgroup.pids()) >= 5
    finally:
        await finish(cgroup, proc)


async def test_io_read_limit_throttles_direct_reads_from_the_data_disk(
    driver: CgroupDriver, tmp_path: Path
) -> None:
    require_root()
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4 << 20))
    cgroup = driver.create("io", Limits(io_read_bps=2 << 20), block_device_of(tmp_path))
    start = time.monotonic()
    proc = await start_in(cgroup, f"exec dd if={data} of=/dev/null bs=1M iflag=direct status=none")
    try:
        with trio.fail_after(20):
            assert await proc.wait() == 0
        elapsed = time.monotonic() - start
        print(f"io_read_bps=2 MiB/s: 4 MiB direct read took {elapsed:.2f} s")
        assert elapsed >= 1.4  # unthrottled it takes milliseconds
    finally:
        await finish(cgroup, proc)


async def test_a_value_the_kernel_rejects_is_an_invalid_request_and_leaves_nothing(
    driver: CgroupDriver,
) -> None:
    """No disk has the device number 0:1234 (major 0 is no driver's; 1:3 was /dev/null's
    numbers, but a kernel that autoloads brd makes that ram3): the blkio/io write fails
    after the dirs were made."""
    require_root()
    with pytest.raises(InvalidRequestError, match="io read limit|io limit"):
        driver.create("bad-io", Limits(cpu=0.5, io_read_bps=1000), (0, 1234))
    assert not cgroups_named("bad-io")


# ---- kill_all, remove, cleanup_stale -------------------------------------------------------


async def test_kill_all_kills_a_term_ignoring_process_and_a_double_forked_grandchild(
    driver: CgroupDriver,
) -> None:
    require_root()
    cgroup = driver.create("kill", Limits(), None)
    proc = await start_in(cgroup, "trap '' TERM; (setsid sleep 1000 &); sleep 1000")
    try:
        # sh, its sleep, and the orphaned sleep that leads a session of its own
        await eventually(
            lambda: len(sessions_of_their_own(cgroup, proc.pid)) == 1,
            timeout=5,
            what="the grandchild leads a session",
        )
        orphan = sessions_of_their_own(cgroup, proc.pid)
        proc.terminate()  # ignored
        await trio.sleep(0.1)  # the behaviour under test: SIGTERM does not end it
        assert proc.poll() is None
        cgroup.kill_all()
        with trio.fail_after(5):
            assert await proc.wait() == -9
        await wait_until_empty(cgroup)
        assert not alive(orphan[0])
        cgroup.kill_all()  # idempotent
        await cgroup.remove()
        assert not any(d.exists() for d in cgroup.directories())
    finally:
        await finish(cgroup, proc)


async def test_kill_all_stops_a_fork_storm(driver: CgroupDriver) -> None:
    """Freeze first: a loop that forks as fast as it can cannot outrun the kill."""
    require_root()
    cgroup = driver.create("storm", Limits(pids=64), None)
    proc = await start_in(cgroup, "while :; do sleep 1000 & done")
    try:
        await eventually(lambda: len(cgroup.pids()) >= 32, timeout=5, what="the storm grows")
        start = time.monotonic()
        cgroup.kill_all()
        print(f"kill_all of {len(cgroup.pids())} tasks took {time.monotonic() - start:.4f} s")
        await wait_until_empty(cgroup)
        await cgroup.remove(timeout=5)
    finally:
        await finish(cgroup, proc)


async def test_remove_right_after_kill_all_waits_for_the_tasks_to_leave(
    driver: CgroupDriver,
) -> None:
    require_root()
    cgroup = driver.create("rm", Limits(), None)
    proc = await start_in(cgroup, "for i in 1 2 3 4 5 6 7 8; do sleep 1000 & done; wait")
    try:
        cgroup.kill_all()
        start = time.monotonic()
        await cgroup.remove()
        print(f"remove after kill_all took {time.monotonic() - start:.4f} s")
        assert not any(d.exists() for d in cgroup.directories())
        assert cgroup.pids() == []
    finally:
        await finish(cgroup, proc)


async def test_cleanup_stale_kills_and_removes_a_crashed_runs_job_cgroup(
    driver: CgroupDriver,
) -> None:
    require_root()
    stale = driver.create("stale", Limits(pids=10), None)
    proc = await start_in(stale, "sleep 1000 & sleep 1000")
    driver.close()  # as the crash would: the parent stays (busy), its lock goes
    restarted = detect(name=driver.parent.name)
    try:
        assert restarted.parent == driver.parent
        assert restarted.cleanup_stale() == ["stale"]
        with trio.fail_after(5):
            assert await proc.wait() == -9
        assert not any(d.exists() for d in stale.directories())
        assert restarted.cleanup_stale() == []
    finally:
        await finish(stale, proc)
        restarted.close()


async def test_v2_cgroup_kill_on_the_real_unified_hierarchy(tmp_path: Path) -> None:
    """The v2 driver with no controllers at all, on whatever cgroup2 mount this host has (a
    hybrid host's unified one has none): cgroup.kill, procs and rmdir are real. It works in
    a fresh, empty cgroup of its own, so it moves no process and delegates nothing."""
    require_root()
    (unified,) = [m for m in read_mounts(Path("/proc/self/mountinfo")) if m.fstype == "cgroup2"]
    own = unified.mount_point / read_own_cgroups(Path("/proc/self/cgroup"))[""].lstrip("/")
    subtree = own / unique_name()
    subtree.mkdir()
    driver = V2Driver.open(subtree, "jobs", controllers=())
    try:
        cgroup = driver.create("job", Limits(), None)
        proc = await start_in(cgroup, "trap '' TERM; (setsid sleep 1000 &); sleep 1000")
        try:
            await eventually(lambda: len(cgroup.pids()) >= 3, timeout=5, what="three processes")
            assert (cgroup.directories()[0] / "cgroup.kill").exists()
            cgroup.kill_all()
            with trio.fail_after(5):
                assert await proc.wait() == -9
            await wait_until_empty(cgroup)
        finally:
            await finish(cgroup, proc)
        assert not cgroup.directories()[0].exists()
        with pytest.raises(SetupError, match="no such control file"):
            driver.create("limited", Limits(memory=64 << 20), None)  # no memory controller here
        assert not (driver.parent / "limited").exists()
    finally:
        driver.close()
        subtree.rmdir()
    assert not driver.parent.exists()


# ---- block devices -------------------------------------------------------------------------


def test_block_device_of_a_data_dir_is_the_disk_findmnt_names(tmp_path: Path) -> None:
    require_root()
    source = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "-T", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    entry = Path("/sys/class/block", Path(source).name)
    disk = entry.resolve().parent if (entry / "partition").exists() else entry
    major, minor = (int(n) for n in (disk / "dev").read_text().split(":"))
    print(f"{tmp_path} is on {source}: {major}:{minor}")
    assert block_device_of(tmp_path) == (major, minor)


def test_a_daemon_in_another_memory_cgroup_is_refused_the_parent_it_shares_in_cpu(
    tmp_path: Path,
) -> None:
    """On v1, two daemons whose memory cgroups differ but whose cpu, pids, ... cgroups are
    the same (this host's hierarchies are split: see /proc/self/cgroup) share the job
    parent in those hierarchies; with a lock on the memory parent only, both ran and one
    removed the other's `cpu/<name>`. The lock is on every hierarchy's parent."""
    require_root()
    own = read_own_cgroups(Path("/proc/self/cgroup"))
    mounts = read_mounts(Path("/proc/self/mountinfo"))
    if any(m.fstype == "cgroup2" and m.mount_point == Path("/sys/fs/cgroup") for m in mounts):
        pytest.skip("a cgroup v2 host has one hierarchy: test_cgroups_fake covers its lock")
    (memory_mount,) = [m for m in mounts if m.fstype == "cgroup" and "memory" in m.controllers]
    # A second daemon's view of itself: the same cgroups but memory, a sibling cgroup.
    other_memory = f"{own['memory'].rstrip('/')}/{unique_name()}-other"
    other_dir = memory_mount.mount_point / other_memory.lstrip("/")
    other_dir.mkdir()
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text(
        "".join(
            f"{line.rpartition(':')[0]}:{other_memory}\n"
            if line.split(":")[1] == "memory"
            else line + "\n"
            for line in Path("/proc/self/cgroup").read_text().splitlines()
        )
    )
    name = unique_name()
    first = detect(name=name)
    try:
        with pytest.raises(SetupError, match=r"another jwsd owns cgroup /sys/fs/cgroup/\w+/"):
            detect(name=name, proc_self_cgroup=proc_cgroup)
        assert not (other_dir / name).exists(), "the refused daemon left its memory parent"
        assert all(p.is_dir() for p in first.parent_dirs()), "the first daemon's tree was touched"
    finally:
        first.close()
        other_dir.rmdir()
    assert not cgroups_named(name)
