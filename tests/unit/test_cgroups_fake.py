"""The cgroup layer against a fake cgroupfs in a temp dir: detection, the exact files
and formats each limit writes, usage parsing, and clean-up on every path.

The fake is a directory tree laid out like /sys/fs/cgroup plus fake
/proc/self/mountinfo and /proc/self/cgroup files. What the kernel does by itself
is emulated by the test: control files a fresh cgroup would have are created by
hand, and `fake_rmdir` refuses (EBUSY) while a listed process is alive or a child
cgroup exists, and otherwise drops the control files along with the directory.
Processes that must be killed are real `sleep` children.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import trio
import trio.testing

from jobworker.errors import InvalidRequestError, SetupError
from jobworker.model import Limits, Usage
from jobworker.sandbox.cgroups import (
    V1Driver,
    V1JobCgroup,
    V2Driver,
    V2JobCgroup,
    block_device_of,
    detect,
)
from jobworker.sandbox.cgroups.detect import read_mounts

V1_CONTROLLERS = ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"]
DEVICE = (254, 0)


# ---- the fake cgroupfs ---------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def fake_rmdir(path: Path) -> None:
    """rmdir as cgroupfs does it: EBUSY while a child cgroup or a live task is left;
    the control files go with the directory."""
    entries = list(path.iterdir())  # FileNotFoundError for a missing cgroup, as the kernel
    procs = path / "cgroup.procs"
    if any(e.is_dir() for e in entries) or (
        procs.exists() and any(_alive(int(p)) for p in procs.read_text().split())
    ):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
    for entry in entries:
        entry.unlink()
    os.rmdir(path)


class FakeHost:
    """A fake cgroup root with its mountinfo and /proc/self/cgroup."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "cgroup"
        self.root.mkdir()
        self.mountinfo = tmp_path / "mountinfo"
        self.proc_self_cgroup = tmp_path / "proc_self_cgroup"
        self.mount_lines: list[str] = []
        self.cgroup_lines: list[str] = []

    def mount(self, point: str, fstype: str, options: str, *, root: str = "/") -> Path:
        n = len(self.mount_lines) + 30
        path = self.root / point if point else self.root
        path.mkdir(parents=True, exist_ok=True)
        self.mount_lines.append(
            f"{n} 23 0:{n} {root} {path} rw,relatime - {fstype} {fstype} rw,{options}"
        )
        return path

    def own(self, controllers: str, path: str) -> None:
        self.cgroup_lines.append(f"{len(self.cgroup_lines) + 1}:{controllers}:{path}")

    def write(self) -> None:
        self.mountinfo.write_text("".join(line + "\n" for line in self.mount_lines))
        self.proc_self_cgroup.write_text("".join(line + "\n" for line in self.cgroup_lines))

    def detect(self, name: str = "jobworker") -> V1Driver | V2Driver:
        self.write()
        driver = detect(
            name=name,
            root=self.root,
            proc_self_cgroup=self.proc_self_cgroup,
            mountinfo=self.mountinfo,
            rmdir=fake_rmdir,
        )
        assert isinstance(driver, V1Driver | V2Driver)
        return driver


def v1_host(tmp_path: Path, *, skip: Iterable[str] = ()) -> FakeHost:
    """Laid out like this project's machines: one hierarchy per controller, memory
    nested under /process_api/<hash>, plus a controller-less cgroup2 on unified."""
    host = FakeHost(tmp_path)
    host.mount("systemd", "cgroup", "name=systemd")
    host.own("name=systemd", "/")
    for controller in V1_CONTROLLERS:
        if controller in skip:
            continue
        host.mount(controller, "cgroup", controller)
        own = "/process_api/abc" if controller == "memory" else "/"
        (host.root / controller / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
        host.own(controller, own)
    unified = host.mount("unified", "cgroup2", "nsdelegate")
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    host.own("", "/")
    return host


def v2_host(tmp_path: Path, *, controllers: str = "cpuset cpu io memory hugetlb pids") -> FakeHost:
    """A cgroup2-only host; the daemon runs in /system.slice/jwsd.service with another process."""
    host = FakeHost(tmp_path)
    host.mount("", "cgroup2", "nsdelegate")
    own = host.root / "system.slice" / "jwsd.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.type").write_text("domain\n")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    host.own("", "/system.slice/jwsd.service")
    return host


@pytest.fixture
async def sleeper() -> AsyncIterator[trio.Process]:
    """A real child process to kill; never left behind."""
    proc = await trio.lowlevel.open_process(["sleep", "100"])
    try:
        yield proc
    finally:
        proc.kill()
        await proc.wait()


def files(directory: Path) -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(directory.iterdir()) if f.is_file()}


# ---- detection -----------------------------------------------------------------------------


def test_hybrid_host_like_this_one_picks_v1_with_each_hierarchy_under_the_daemons_own_cgroup(
    tmp_path: Path,
) -> None:
    host = v1_host(tmp_path)
    driver = host.detect()
    assert isinstance(driver, V1Driver) and driver.version == 1
    assert driver.parent == host.root / "memory/process_api/abc/jobworker"
    assert driver.parents["cpu"] == host.root / "cpu/jobworker"
    assert all(p.is_dir() for p in driver.parents.values())


@pytest.mark.parametrize("version", [1, 2])
def test_detect_after_close_reuses_the_existing_parent(tmp_path: Path, version: int) -> None:
    """A restarted daemon must not fail on the parent its predecessor left."""
    host = (v1_host if version == 1 else v2_host)(tmp_path)
    first = host.detect()
    (first.parent / "left-by-a-crash").mkdir()  # keeps the parent from being removed
    first.close()
    second = host.detect()
    assert first.parent == second.parent


@pytest.mark.parametrize("version", [1, 2])
def test_a_second_daemon_on_the_same_parent_is_refused_until_the_first_closes(
    tmp_path: Path, version: int
) -> None:
    """Two daemons sharing a job parent would sweep each other's jobs at start-up."""
    host = (v1_host if version == 1 else v2_host)(tmp_path)
    first = host.detect()
    with pytest.raises(SetupError, match="another jwsd owns cgroup .*--cgroup-name"):
        host.detect()
    other = host.detect(name="other")  # another name is another parent: fine
    other.close()
    first.close()
    first.close()  # idempotent
    host.detect().close()


def test_co_mounted_v1_controllers_share_one_job_directory(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.mount("cpu,cpuacct", "cgroup", "cpu,cpuacct")
    host.own("cpu,cpuacct", "/")
    for controller in ["memory", "blkio", "pids", "freezer"]:
        host.mount(controller, "cgroup", controller)
        host.own(controller, "/")
    driver = host.detect()
    cgroup = driver.create("job", Limits(cpu=0.5), None)
    assert len(cgroup.procs_files) == 5
    cpu_dir = host.root / "cpu,cpuacct/jobworker/job"
    assert files(cpu_dir) == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}


def test_v1_mount_of_a_subtree_maps_the_daemons_cgroup_path_into_it(tmp_path: Path) -> None:
    """In a container the mount shows /docker/x at the mount point: own /docker/x is the mount point."""
    host = FakeHost(tmp_path)
    for controller in V1_CONTROLLERS:
        host.mount(controller, "cgroup", controller, root="/docker/x")
        host.own(controller, "/docker/x")
    driver = host.detect()
    assert driver.parent == host.root / "memory/jobworker"


def test_daemon_cgroup_outside_the_mounted_subtree_is_a_setup_error(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    for controller in V1_CONTROLLERS:
        host.mount(controller, "cgroup", controller, root="/docker/x")
        host.own(controller, "/elsewhere")
    with pytest.raises(SetupError, match="outside"):
        host.detect()


def test_v1_missing_controller_is_a_setup_error_naming_it(tmp_path: Path) -> None:
    host = v1_host(tmp_path, skip=["freezer"])
    with pytest.raises(SetupError, match="freezer"):
        host.detect()


def test_no_cgroup_filesystem_is_a_setup_error(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.own("", "/")
    with pytest.raises(SetupError, match="no cgroup filesystem"):
        host.detect()


def test_bad_parent_name_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    host = v1_host(tmp_path)
    with pytest.raises(SetupError, match="bad cgroup name"):
        host.detect(name="../escape")
    assert not list(host.root.rglob("escape"))


def test_v2_moves_the_daemon_into_a_leaf_then_delegates_controllers(tmp_path: Path) -> None:
    """The no-internal-processes rule: our pid goes to <own>/jwsd before subtree_control is written."""
    host = v2_host(tmp_path)
    driver = host.detect()
    own = host.root / "system.slice/jwsd.service"
    assert isinstance(driver, V2Driver) and driver.version == 2
    assert driver.parent == own / "jobworker"
    assert (own / "jwsd/cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +io +pids"
    assert (own / "jobworker/cgroup.subtree_control").read_text() == "+cpu +memory +io +pids"


def test_v2_detect_from_inside_the_daemon_leaf_keeps_the_same_parent(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    first = host.detect()
    (first.parent / "job").mkdir()  # keeps the parent from being removed
    first.close()
    host.cgroup_lines = ["0::/system.slice/jwsd.service/jwsd"]  # where the first detect moved us
    second = host.detect()
    assert second.parent == first.parent


async def test_v2_moves_every_other_process_of_its_cgroup_into_the_init_leaf(
    tmp_path: Path, sleeper: trio.Process
) -> None:
    """A container's init, a wrapper script or a test runner may share jwsd's cgroup: they
    are moved out of the way (to <own>/init), as moby's dind entrypoint does."""
    host = v2_host(tmp_path)
    own = host.root / "system.slice/jwsd.service"
    (own / "cgroup.procs").write_text(f"{sleeper.pid}\n{os.getpid()}\n")
    host.detect().close()
    assert (own / "init/cgroup.procs").read_text() == str(sleeper.pid)
    assert (own / "jwsd/cgroup.procs").read_text() == str(os.getpid())


def test_v2_detect_from_the_init_leaf_of_a_delegating_parent_uses_that_parent(
    tmp_path: Path,
) -> None:
    """A jwsd started by a process an earlier jwsd moved to <own>/init shares <own>."""
    host = v2_host(tmp_path)
    first = host.detect()
    first.close()
    host.cgroup_lines = ["0::/system.slice/jwsd.service/init"]
    second = host.detect(name="second")
    assert second.parent == host.root / "system.slice/jwsd.service/second"


@pytest.mark.parametrize("version", [1, 2])
def test_a_configured_parent_is_created_and_used_instead_of_the_daemons_cgroup(
    tmp_path: Path, version: int
) -> None:
    """--cgroup-parent: a daemon started from a shell gets a subtree of its own."""
    host = (v1_host if version == 1 else v2_host)(tmp_path)
    if version == 2:
        subtree = host.root / "jobworker.slice"
        subtree.mkdir()  # what the kernel would show in a fresh cgroup
        (subtree / "cgroup.controllers").write_text("cpu io memory pids\n")
        (subtree / "cgroup.type").write_text("domain\n")
    host.write()
    driver = detect(
        name="jobworker",
        subtree="/jobworker.slice",
        root=host.root,
        proc_self_cgroup=host.proc_self_cgroup,
        mountinfo=host.mountinfo,
        rmdir=fake_rmdir,
    )
    expected = "jobworker.slice/jobworker" if version == 2 else "memory/jobworker.slice/jobworker"
    assert driver.parent == host.root / expected
    driver.close()


def test_a_configured_parent_must_be_an_absolute_cgroup_path(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    host.write()
    for bad in ["relative", "/a/../../escape"]:
        with pytest.raises(SetupError, match="bad cgroup parent"):
            detect(
                subtree=bad,
                root=host.root,
                proc_self_cgroup=host.proc_self_cgroup,
                mountinfo=host.mountinfo,
            )


def test_v2_in_the_root_cgroup_moves_nothing(tmp_path: Path) -> None:
    """The root cgroup (no cgroup.type) may hold processes and delegate controllers."""
    host = FakeHost(tmp_path)
    host.mount("", "cgroup2", "nsdelegate")
    (host.root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (host.root / "cgroup.procs").write_text("1\n")
    host.own("", "/")
    driver = host.detect()
    assert driver.parent == host.root / "jobworker"
    assert not (host.root / "jwsd").exists()


def test_v2_without_a_needed_controller_is_a_setup_error_naming_it(tmp_path: Path) -> None:
    host = v2_host(tmp_path, controllers="cpu memory pids")
    with pytest.raises(SetupError, match="io controller"):
        host.detect()


def test_mountinfo_octal_escapes_are_decoded(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "40 31 0:37 / /sys/fs/cgroup/my\\040cpu rw - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /proc rw - proc proc rw\n"
    )
    (mount,) = read_mounts(mountinfo)
    assert mount.mount_point == Path("/sys/fs/cgroup/my cpu")
    assert mount.controllers == {"rw", "cpu"}


# ---- limits: the right file, the right format ---------------------------------------------


def test_v1_every_limit_writes_its_file_in_the_kernels_format(tmp_path: Path) -> None:
    driver = v1_host(tmp_path).detect()
    assert isinstance(driver, V1Driver)
    (driver.parent / "memory.memsw.limit_in_bytes").write_text("max\n")  # swap accounting on
    limits = Limits(cpu=1.5, memory=64 << 20, io_read_bps=1000, io_write_bps=2000, pids=12)
    cgroup = driver.create("job-1", limits, DEVICE)
    dirs = cgroup.dirs
    assert files(dirs["cpu"]) == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "150000"}
    assert files(dirs["memory"]) == {
        "memory.limit_in_bytes": str(64 << 20),
        "memory.memsw.limit_in_bytes": str(64 << 20),
    }
    assert files(dirs["blkio"]) == {
        "blkio.throttle.read_bps_device": "254:0 1000",
        "blkio.throttle.write_bps_device": "254:0 2000",
    }
    assert files(dirs["pids"]) == {"pids.max": "12"}
    assert files(dirs["cpuacct"]) == files(dirs["freezer"]) == {}
    assert cgroup.procs_files == tuple(dirs[c] / "cgroup.procs" for c in V1_CONTROLLERS)


def test_v1_without_swap_accounting_writes_no_memsw_limit(tmp_path: Path) -> None:
    driver = v1_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(memory=16 << 20), None)
    assert isinstance(cgroup, V1JobCgroup)
    assert files(cgroup.dirs["memory"]) == {"memory.limit_in_bytes": str(16 << 20)}


def test_unset_limits_write_nothing(tmp_path: Path) -> None:
    driver = v1_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    assert all(files(d) == {} for d in cgroup.directories())


def test_v2_every_limit_writes_its_file_in_the_kernels_format(tmp_path: Path) -> None:
    driver = v2_host(tmp_path).detect()
    (driver.parent / "memory.swap.max").write_text("max\n")
    limits = Limits(cpu=0.25, memory=32 << 20, io_read_bps=1000, io_write_bps=2000, pids=7)
    cgroup = driver.create("job", limits, DEVICE)
    assert isinstance(cgroup, V2JobCgroup)
    assert files(cgroup.path) == {
        "cpu.max": "25000 100000",
        "memory.max": str(32 << 20),
        "memory.swap.max": "0",
        "io.max": "254:0 rbps=1000 wbps=2000",
        "pids.max": "7",
    }
    assert cgroup.procs_files == (driver.parent / "job/cgroup.procs",)


def test_v2_one_io_direction_writes_only_its_key(tmp_path: Path) -> None:
    driver = v2_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(io_write_bps=5000), (8, 0))
    assert files(driver.parent / "job") == {"io.max": "8:0 wbps=5000"}
    assert cgroup.name == "job"


@pytest.mark.parametrize("version", [1, 2])
def test_io_limit_without_a_device_is_refused_and_leaves_nothing(
    tmp_path: Path, version: int
) -> None:
    driver = (v1_host if version == 1 else v2_host)(tmp_path).detect()
    with pytest.raises(InvalidRequestError, match="block device"):
        driver.create("job", Limits(io_read_bps=1000), None)
    assert not list(tmp_path.rglob("job"))


@pytest.mark.parametrize("job_id", ["", ".", "..", "a/b"])
def test_a_job_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, job_id: str) -> None:
    driver = v1_host(tmp_path).detect()
    with pytest.raises(InvalidRequestError, match="bad job id"):
        driver.create(job_id, Limits(), None)


def test_v1_partial_failure_removes_every_directory_already_made(tmp_path: Path) -> None:
    """create() fails in the last hierarchy (freezer): the five made before are gone."""
    driver = v1_host(tmp_path).detect()
    assert isinstance(driver, V1Driver)
    (driver.parents["freezer"] / "job").write_text("in the way")
    with pytest.raises(SetupError, match="exists already"):
        driver.create("job", Limits(cpu=1, pids=5), None)
    for controller in ["cpu", "cpuacct", "memory", "blkio", "pids"]:
        assert not (driver.parents[controller] / "job").exists(), controller


def test_v2_existing_job_cgroup_is_a_setup_error_and_is_left_alone(tmp_path: Path) -> None:
    driver = v2_host(tmp_path).detect()
    (driver.parent / "job").mkdir()
    (driver.parent / "job/marker").write_text("theirs")
    with pytest.raises(SetupError, match="exists already"):
        driver.create("job", Limits(), None)
    assert (driver.parent / "job/marker").read_text() == "theirs"


# ---- usage ---------------------------------------------------------------------------------


def test_v1_usage_reads_cpuacct_max_usage_and_the_oom_kill_count(tmp_path: Path) -> None:
    driver = v1_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    assert isinstance(cgroup, V1JobCgroup)
    (cgroup.dirs["cpuacct"] / "cpuacct.usage").write_text("123456789\n")
    (cgroup.dirs["memory"] / "memory.max_usage_in_bytes").write_text("4096\n")
    (cgroup.dirs["memory"] / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    )
    assert cgroup.usage() == Usage(cpu_ns=123456789, peak_memory=4096, oom_kills=3)


def test_v2_usage_reads_cpu_stat_memory_peak_and_events(tmp_path: Path) -> None:
    driver = v2_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    path = driver.parent / "job"
    (path / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n")
    (path / "memory.current").write_text("100\n")
    (path / "memory.peak").write_text("8192\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert cgroup.usage() == Usage(cpu_ns=2_500_000, peak_memory=8192, oom_kills=1)


def test_v2_usage_without_memory_peak_falls_back_to_memory_current(tmp_path: Path) -> None:
    """Kernels before 5.19 have no memory.peak; and an old memory.events has no oom_kill."""
    driver = v2_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    path = driver.parent / "job"
    (path / "cpu.stat").write_text("usage_usec 1\n")
    (path / "memory.current").write_text("100\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\n")
    assert cgroup.usage() == Usage(cpu_ns=1000, peak_memory=100, oom_kills=0)


def test_usage_of_a_missing_counter_is_a_setup_error(tmp_path: Path) -> None:
    driver = v1_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    with pytest.raises(SetupError, match=r"cannot read .*cpuacct.usage"):
        cgroup.usage()


# ---- kill_all, pids, remove ----------------------------------------------------------------


async def test_v1_kill_all_sigkills_every_listed_pid_and_thaws(
    tmp_path: Path, sleeper: trio.Process
) -> None:
    driver = v1_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    assert isinstance(cgroup, V1JobCgroup)
    cgroup.procs_files[0].write_text(f"{sleeper.pid}\n")
    cgroup.procs_files[2].write_text(f"{sleeper.pid}\n")
    assert cgroup.pids() == [sleeper.pid]
    cgroup.kill_all()
    with trio.fail_after(5):
        assert await sleeper.wait() == -9
    assert (cgroup.dirs["freezer"] / "freezer.state").read_text() == "THAWED"


async def test_v2_kill_all_writes_cgroup_kill(tmp_path: Path) -> None:
    driver = v2_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    kill = driver.parent / "job/cgroup.kill"
    kill.write_text("")  # the kernel's file; its write kills, which the fake cannot
    cgroup.kill_all()
    assert kill.read_text() == "1"


async def test_v2_kill_all_without_cgroup_kill_freezes_kills_and_thaws(
    tmp_path: Path, sleeper: trio.Process
) -> None:
    """Kernels before 5.14 have no cgroup.kill: freeze, SIGKILL each pid, thaw."""
    driver = v2_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    cgroup.procs_files[0].write_text(f"{sleeper.pid}\n")
    cgroup.kill_all()
    with trio.fail_after(5):
        assert await sleeper.wait() == -9
    assert (driver.parent / "job/cgroup.freeze").read_text() == "0"


@pytest.mark.parametrize("version", [1, 2])
async def test_kill_all_and_pids_on_a_removed_cgroup_do_nothing(
    tmp_path: Path, version: int
) -> None:
    driver = (v1_host if version == 1 else v2_host)(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    await cgroup.remove()
    assert not any(d.exists() for d in cgroup.directories())
    cgroup.kill_all()
    cgroup.kill_all()
    assert cgroup.pids() == []
    assert not any(d.exists() for d in cgroup.directories())
    await cgroup.remove()  # missing dirs are fine


async def test_remove_waits_for_killed_tasks_to_leave(
    tmp_path: Path, sleeper: trio.Process
) -> None:
    driver = v1_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    cgroup.procs_files[0].write_text(f"{sleeper.pid}\n")

    async def kill_later() -> None:
        await trio.testing.wait_all_tasks_blocked()  # remove() is waiting for it to leave
        sleeper.kill()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_later)
        await cgroup.remove(timeout=5)
    assert not any(d.exists() for d in cgroup.directories())


async def test_remove_of_a_cgroup_that_stays_busy_gives_up_after_the_timeout(
    tmp_path: Path, sleeper: trio.Process, autojump_clock: trio.testing.MockClock
) -> None:
    """On trio's clock (jumping, so the bound is exact and costs no wall time)."""
    driver = v2_host(tmp_path).detect()
    cgroup = driver.create("job", Limits(), None)
    cgroup.procs_files[0].write_text(f"{sleeper.pid}\n")
    start = trio.current_time()
    with pytest.raises(SetupError, match="still has processes"):
        await cgroup.remove(timeout=0.3)
    assert 0.15 <= trio.current_time() - start <= 0.3
    assert (driver.parent / "job").is_dir()


# ---- crash leftovers and close -------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
async def test_cleanup_stale_kills_and_removes_every_leftover_job_cgroup(
    tmp_path: Path, version: int, sleeper: trio.Process
) -> None:
    host = (v1_host if version == 1 else v2_host)(tmp_path)
    crashed = host.detect()
    old = crashed.create("old-busy", Limits(pids=3), None)
    crashed.create("old-idle", Limits(), None)
    for procs in old.procs_files:
        procs.write_text(f"{sleeper.pid}\n")
    crashed.close()  # as its death would, releases the parent (busy: it stays)
    driver = host.detect()
    assert driver.cleanup_stale() == ["old-busy", "old-idle"]
    with trio.fail_after(5):
        assert await sleeper.wait() == -9
    assert not [d for d in driver.parent.iterdir() if d.is_dir()]
    assert driver.cleanup_stale() == []


@pytest.mark.parametrize("version", [1, 2])
def test_close_removes_the_empty_parent_and_never_raises(tmp_path: Path, version: int) -> None:
    driver = (v1_host if version == 1 else v2_host)(tmp_path).detect()
    driver.create("job", Limits(), None)
    driver.close()  # busy: a job cgroup is still there
    assert driver.parent.is_dir()
    fake_rmdir(driver.parent / "job")
    driver.close()
    assert not driver.parent.exists()
    driver.close()  # missing


# ---- block devices -------------------------------------------------------------------------


def test_block_device_of_a_dir_on_a_disk_is_that_disks_numbers(tmp_path: Path) -> None:
    st_dev = tmp_path.stat().st_dev
    entry = Path("/sys/dev/block", f"{os.major(st_dev)}:{os.minor(st_dev)}")
    if not entry.exists():
        pytest.fail(f"{tmp_path} is not on a block device here; point TMPDIR at a disk")
    disk = entry.resolve().parent if (entry / "partition").exists() else entry.resolve()
    expected = tuple(int(n) for n in (disk / "dev").read_text().split(":"))
    assert block_device_of(tmp_path) == expected


def test_block_device_of_a_tmpfs_is_an_invalid_request_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="is on tmpfs"):
        block_device_of(Path("/dev/shm"))


def test_block_device_of_a_partition_is_its_whole_disk(tmp_path: Path) -> None:
    """The kernel throttles whole disks: a partition's numbers are resolved to its disk's."""
    st_dev = tmp_path.stat().st_dev
    sys_block = tmp_path / "sys/dev/block"
    sys_block.mkdir(parents=True)
    partition = tmp_path / "sys/devices/sda/sda1"
    partition.mkdir(parents=True)
    (partition / "partition").write_text("1\n")
    (partition.parent / "dev").write_text("8:0\n")
    (sys_block / f"{os.major(st_dev)}:{os.minor(st_dev)}").symlink_to(partition)
    assert block_device_of(tmp_path, sys_dev_block=sys_block) == (8, 0)


def test_block_device_of_a_missing_path_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="cannot look at"):
        block_device_of(tmp_path / "nope")


# ---- one daemon per tree, on every hierarchy; a tree removed under the daemon ------------


def test_a_daemon_in_another_memory_cgroup_is_refused_the_parents_it_would_share(
    tmp_path: Path,
) -> None:
    """The lock is on every hierarchy's parent, not just the memory one; the refused
    daemon removes the memory parent it had just made."""
    first = v1_host(tmp_path)
    driver = first.detect()
    (first.root / "memory" / "process_api" / "other").mkdir()
    first.cgroup_lines = [
        line.replace("memory:/process_api/abc", "memory:/process_api/other")
        for line in first.cgroup_lines
    ]
    with pytest.raises(SetupError, match=r"another jwsd owns cgroup .*/cpu/jobworker;"):
        first.detect()
    assert not (first.root / "memory" / "process_api" / "other" / "jobworker").exists()
    driver.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_tree_removed_under_the_daemon_is_rebuilt_by_the_next_create_and_locked_again(
    tmp_path: Path, version: int
) -> None:
    host = (v1_host if version == 1 else v2_host)(tmp_path)
    driver = host.detect()
    told: list[bool] = []
    driver.on_tree_change = told.append
    for parent in driver.parent_dirs():
        fake_rmdir(parent)
    driver.create("job", Limits(), None).remove_blocking()
    assert told == [False, True] and driver.tree_whole
    assert all(parent.is_dir() for parent in driver.parent_dirs())
    with pytest.raises(SetupError, match="another jwsd owns cgroup"):
        host.detect()  # the rebuilt parents are locked, as the first ones were
    driver.ensure_tree()
    assert told == [False, True]  # a whole tree: nothing to say
    driver.close()


def test_a_tree_another_daemon_took_meanwhile_is_not_rebuilt_until_it_lets_go(
    tmp_path: Path,
) -> None:
    host = v1_host(tmp_path)
    driver = host.detect()
    told: list[bool] = []
    driver.on_tree_change = told.append
    for parent in driver.parent_dirs():
        fake_rmdir(parent)
    other = host.detect()  # made the parents again, and holds them
    with pytest.raises(SetupError, match="another jwsd owns cgroup"):
        driver.create("job", Limits(), None)
    assert told == [False] and not driver.tree_whole
    other.close()
    driver.ensure_tree()
    assert told == [False, True] and driver.tree_whole
    driver.close()
