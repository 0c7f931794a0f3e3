"""JobTracker on the real kernel: limits measured by their effect, isolation seen
from inside the job, stops that leave nothing behind, output delivered whole.

Every test here needs root (cgroups, bubblewrap as a privilege-dropping root).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import platform
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import trio

from jobworker.errors import (
    AccessDeniedError,
    InvalidRequestError,
    JobNotFoundError,
    SetupError,
    ShuttingDownError,
    StartFailedError,
)
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.store import JobRecord, JobStore
from jobworker.jobs.tracker import JobTracker
from jobworker.model import MAX_LISTED_ARGS_BYTES, JobSpec, JobState, Limits, NetworkMode, Outcome
from jobworker.sandbox import seccomp
from jobworker.sandbox.cgroups import detect
from tests.conftest import require_root
from tests.support.cgroupfs import cgroup_pids, cgroups_named, job_cgroup_dirs
from tests.support.hostids import host_ids
from tests.support.leaks import LeakCheck, child_pids, processes_running
from tests.support.names import unique_name
from tests.support.records import assert_only_records_left
from tests.support.timing import scaled
from tests.support.tracking import run_to_end
from tests.support.waiting import eventually

pytestmark = pytest.mark.root


def sh(script: str, **kwargs: object) -> JobSpec:
    return JobSpec(argv=("sh", "-c", script), **kwargs)  # type: ignore[arg-type]


# ---- exit status ---------------------------------------------------------------


async def test_exit_codes_are_reported_exactly(tracker: JobTracker) -> None:
    out, st = await run_to_end(tracker, sh("echo hello; exit 0"))
    assert out == b"hello\n"
    assert (st.exit_code, st.signal, st.outcome) == (0, None, Outcome.EXITED)
    _, st = await run_to_end(tracker, sh("exit 3"))
    assert (st.exit_code, st.signal, st.outcome) == (3, None, Outcome.EXITED)
    _, st = await run_to_end(tracker, sh("kill -KILL $$"))
    assert (st.exit_code, st.signal, st.outcome) == (137, 9, Outcome.SIGNALED)
    assert st.started_at is not None and st.ended_at is not None
    assert st.ended_at >= st.started_at


async def test_a_sandbox_not_ready_in_time_fails_the_start_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A host too busy to build a sandbox within the daemon's bound: the start is a
    StartFailedError that says so (not an internal error), and nothing is left."""
    require_root()
    name = unique_name()
    async with JobTracker(
        TrackerConfig(
            data_dir=tmp_path / "data",
            cgroup_name=name,
            sandbox_timeout=0.001,
            network_default=NetworkMode.NONE,
        )
    ) as tracker:
        async with LeakCheck():
            with pytest.raises(StartFailedError, match="not ready within 0.001 s"):
                await tracker.start("alex", sh("echo never"))
        assert tracker.list("alex") == []
        # No job cgroup, and no owner group either.
        assert [c for p in cgroups_named(name) for c in p.iterdir() if c.is_dir()] == []


async def test_a_missing_program_fails_the_start_and_leaves_nothing(tracker: JobTracker) -> None:
    with pytest.raises(StartFailedError, match="not found in PATH"):
        await tracker.start("alex", JobSpec(argv=["no-such-program-xyz"]))
    with pytest.raises(StartFailedError, match="is a directory"):
        await tracker.start("alex", JobSpec(argv=["/etc"]))
    assert tracker.list("alex") == []


async def test_stdout_and_stderr_share_one_ordered_stream(tracker: JobTracker) -> None:
    out, _ = await run_to_end(tracker, sh("echo one; echo two >&2; echo three"))
    assert out == b"one\ntwo\nthree\n"


async def test_the_job_can_reopen_dev_stdout_and_dev_stderr(tracker: JobTracker) -> None:
    """Programs that write to /dev/stdout by name (tee, logging configs) work as nobody."""
    out, st = await run_to_end(
        tracker, sh("echo a > /dev/stdout; echo b | tee /dev/stderr > /dev/null")
    )
    assert out == b"a\nb\n"
    assert st.exit_code == 0


async def test_env_and_workdir_are_applied(tracker: JobTracker) -> None:
    out, _ = await run_to_end(
        tracker,
        JobSpec(
            argv=["sh", "-c", 'echo "$GREETING"; pwd'],
            env={"GREETING": "hi", "PATH": "/usr/bin:/bin"},
            workdir="/usr",
        ),
    )
    assert out == b"hi\n/usr\n"


# ---- isolation -------------------------------------------------------------------


async def test_the_job_is_isolated(tracker: JobTracker, tmp_path: Path) -> None:
    """Own pid namespace, only lo, own hostname, read-only root, runs as nobody without capabilities."""
    host_marker = Path("/tmp") / f"jobworker-host-marker-{uuid.uuid4().hex}"
    host_marker.write_text("on the host")
    script = r"""
        echo "procs $(ls /proc | grep -c '^[0-9]')"
        echo "links $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')"
        echo "host $(hostname)"
        if touch /etc/jobworker-test 2>/dev/null; then echo "root writable"; else echo "root read-only"; fi
        echo "uid $(id -u) gid $(id -g)"
        grep CapEff /proc/self/status
        touch ./scratch && echo "workdir writable"
        test -e MARKER && echo "host /tmp visible" || echo "fresh /tmp"
    """.replace("MARKER", str(host_marker))
    try:
        out, st = await run_to_end(tracker, sh(script))
    finally:
        host_marker.unlink()
    lines = out.decode().splitlines()
    # sh, the init of the namespace, ls, grep, and the $(...) subshell: far fewer than the host's.
    assert int(lines[0].split()[1]) <= 6, out
    assert lines[1] == "links lo ", out
    assert lines[2] == "host job"
    assert lines[3] == "root read-only"
    assert lines[4] == "uid 65534 gid 65534"
    assert lines[5].split() == ["CapEff:", "0000000000000000"]
    assert lines[6] == "workdir writable"
    assert lines[7] == "fresh /tmp"
    assert st.exit_code == 0


async def test_the_system_calls_no_job_needs_are_refused(tracker: JobTracker) -> None:
    """The kernel keyring (shared by every job: they all run as one user), bpf,
    perf_event_open, userfaultfd, io_uring and syslog: each refused with EPERM by
    the jobs' seccomp filter, before the kernel looks at the arguments."""
    names = ["keyctl", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "syslog"]
    numbers = {
        name: seccomp.REFUSED[name][0 if platform.machine() == "x86_64" else 1] for name in names
    }
    script = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"for name, number in {numbers!r}.items():\n"
        "    result = libc.syscall(number, 0, 0, 0, 0, 0)\n"
        "    print(name, result, ctypes.get_errno())\n"
    )
    out, status = await run_to_end(tracker, JobSpec(argv=("python3", "-c", script)))
    assert status.exit_code == 0, out
    assert out.decode().splitlines() == [f"{name} -1 {errno.EPERM}" for name in names]


async def test_a_job_cannot_see_other_jobs_files(tracker: JobTracker) -> None:
    first = await tracker.start("alex", sh("echo secret > ./mine; echo written; sleep 30"))
    async with tracker.subscribe("alex", first.job_id) as chunks:
        assert await chunks.receive() == b"written\n"
    out, _ = await run_to_end(
        tracker,
        sh(
            f"ls {tracker.config.data_dir}/jobs/ | wc -l; cat {tracker.config.data_dir}/jobs/{first.job_id}/work/mine 2>&1 || true",
        ),
    )
    # Only its own job dir is visible in the data dir; the other job's file is not there.
    assert out.decode().splitlines()[0] == "1"
    assert b"secret" not in out
    await tracker.stop("alex", first.job_id, grace=0)


def as_job_user(script: str, stdin: str = "", *, pid: int) -> None:
    """Run `script` on the host as the user process `pid` (a job's) runs as."""
    uid, gid = host_ids(pid)
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "sh", "-c", script],
        input=stdin.encode(),
        check=True,
        timeout=10,
    )


async def test_a_job_can_neither_change_its_cgroup_nor_leave_it(tracker: JobTracker) -> None:
    """The limits hold only if the job cannot write them: its own control files, the job
    parent's, and every cgroup.procs it could move itself to are out of its reach."""
    # The job waits for its attack script: only once it runs do we know its cgroup's path.
    status = await tracker.start(
        "alex", sh("while [ ! -e ./attack ]; do sleep 0.02; done; . ./attack")
    )
    (job_dir,) = [d for d in cgroups_named(status.job_id) if (d / "pids.max").exists()]
    parent = job_dir.parent
    targets = [
        job_dir / "pids.max",
        job_dir / "cgroup.procs",
        parent / "cgroup.procs",
        parent.parent / "cgroup.procs",
        parent / "cgroup.subtree_control",  # v2 only
    ]
    targets = [t for t in targets if t.exists()]
    script = "".join(f"if echo $$ 2>/dev/null > {t}; then echo 'wrote {t}'; fi\n" for t in targets)
    script += f"mkdir {job_dir}/escape 2>/dev/null && echo made\ncat /proc/self/cgroup\n"
    script += "echo END; while [ ! -e ./done ]; do sleep 0.02; done\n"  # until we looked
    before = {t: t.read_text() for t in targets if t.name != "cgroup.procs"}
    # The work dir is a tmpfs in the sandbox's mount namespace: reach it through a
    # process in the sandbox (not the outer bubblewrap, in the host's), as the job
    # user's host uid (the tmpfs belongs to the sandbox's user namespace, where root is
    # that uid; /proc/PID/root is open to that uid only).
    inside = (tracker.config.data_dir / "jobs" / status.job_id / "work").relative_to("/")
    pids = (job_dir / "cgroup.procs").read_text().split()
    pid, workdir = next(
        (int(pid), Path(f"/proc/{pid}/root") / inside)
        for pid in pids
        if (Path(f"/proc/{pid}/root") / inside).is_dir()
    )
    as_job_user(
        f"cat > {workdir}/attack.tmp && mv {workdir}/attack.tmp {workdir}/attack", script, pid=pid
    )
    out = bytearray()
    async with tracker.subscribe("alex", status.job_id) as chunks:
        async for chunk in chunks:
            out += chunk
            if out.endswith(b"END\n"):
                break
    assert {t: t.read_text() for t in before} == before
    assert not (job_dir / "escape").exists()
    as_job_user(f"touch {workdir}/done", pid=pid)
    lines = out.decode().splitlines()[:-1]
    assert not [line for line in lines if line.startswith(("wrote", "made"))], out
    # Its own cgroup namespace: the job sees its cgroup as the root.
    assert lines and all(line.endswith(":/") for line in lines), out
    with trio.fail_after(10):
        async with tracker.subscribe("alex", status.job_id) as chunks:
            async for _ in chunks:
                pass
    assert tracker.status("alex", status.job_id).exit_code == 0


# ---- limits, measured by their effect ---------------------------------------------


async def test_memory_limit_kills_and_reports_oom(tracker: JobTracker) -> None:
    _, st = await run_to_end(tracker, sh("tail /dev/zero", limits=Limits(memory=32 << 20)))
    assert st.outcome is Outcome.OOM_KILLED
    assert st.oom_killed and st.signal == 9
    assert st.usage.oom_kills >= 1
    assert 16 << 20 <= st.usage.peak_memory <= 33 << 20
    # The tracker carries on.
    out, st = await run_to_end(tracker, sh("echo still here"))
    assert out == b"still here\n"


async def test_cpu_limit_holds_a_busy_loop_to_a_fifth_of_a_core(tracker: JobTracker) -> None:
    status = await tracker.start("alex", sh("while :; do :; done", limits=Limits(cpu=0.2)))
    # Measured from here, not from the start: building the sandbox used CPU too, and took
    # long enough on a slow (emulated) machine to push a whole-life ratio past the bound.
    before = tracker.status("alex", status.job_id).usage.cpu_ns
    t0 = time.monotonic()
    await trio.sleep(2.0)  # the behaviour under test: CPU used over a wall-clock span
    final = await tracker.stop("alex", status.job_id, grace=0)
    wall = time.monotonic() - t0
    used = (final.usage.cpu_ns - before) / 1e9
    assert 0.12 <= used / wall <= 0.3, f"used {used:.2f} s CPU in {wall:.2f} s"
    assert final.outcome is Outcome.STOPPED and final.stopped_by_user


async def test_owners_share_the_cpu_evenly_whatever_their_job_counts(tracker: JobTracker) -> None:
    """Four busy loops of alex's and one of betty's, all on one CPU: betty's one job
    gets about as much CPU as alex's four together (the kernel shares among owner
    groups, not among jobs), not a fifth of it."""
    loop = "exec taskset -c 0 sh -c 'while :; do :; done'"
    alex = [await tracker.start("alex", sh(loop)) for _ in range(4)]
    betty = await tracker.start("betty", sh(loop))

    def cpu_ns() -> tuple[int, int]:
        return (
            sum(tracker.status("alex", job.job_id).usage.cpu_ns for job in alex),
            tracker.status("betty", betty.job_id).usage.cpu_ns,
        )

    alex_before, betty_before = cpu_ns()
    await trio.sleep(2.0)  # the behaviour under test: CPU shared over a wall-clock span
    alex_after, betty_after = cpu_ns()
    for job in [*alex, betty]:
        await tracker.stop(job.owner, job.job_id, grace=0)
    ratio = (betty_after - betty_before) / (alex_after - alex_before)
    assert ratio > 0.6, f"betty's one job got {ratio:.2f} of alex's four jobs' CPU"


async def test_pids_limit_contains_a_fork_bomb_which_stays_stoppable(tracker: JobTracker) -> None:
    # The main shell execs the sleep instead of forking it: once the bomb has used up the
    # pids, a fork there would fail, and the shell (and so the job) would end on its own.
    status = await tracker.start(
        "alex", sh("f() { f | f & }; f; exec sleep 30", limits=Limits(pids=20))
    )
    # The bomb hits its limit and collapses to a few processes: no one event marks that.
    await trio.sleep(1.0)  # the behaviour under test: the bomb gets a second against its limit
    assert cgroup_pids(tracker.config.cgroup_name, status.job_id)  # the job's cgroup is found
    # the two sandbox helpers are on top
    assert len(cgroup_pids(tracker.config.cgroup_name, status.job_id)) <= 20 + 2
    with trio.fail_after(10):
        final = await tracker.stop("alex", status.job_id, grace=0.5)
    assert final.state is JobState.TERMINATED
    assert cgroup_pids(tracker.config.cgroup_name, status.job_id) == []


async def test_io_read_limit_throttles_direct_reads(tmp_path: Path) -> None:
    """20 MiB of direct reads under 10 MB/s take about 2 s (2.5 GB/s unthrottled).
    The blob is written in a work dir on the data dir's disk (workdir_size=None): a
    tmpfs work dir (the default) never reaches the disk at all."""
    require_root()
    script = """
        dd if=/dev/zero of=./blob bs=1M count=20 oflag=direct status=none
        t0=$(date +%s%N)
        dd if=./blob of=/dev/null bs=1M iflag=direct status=none
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000000 ))
    """
    async with JobTracker(
        TrackerConfig(
            data_dir=tmp_path / "data",
            cgroup_name=unique_name(),
            workdir_size=None,
            network_default=NetworkMode.NONE,
        )
    ) as tracker:
        out, st = await run_to_end(tracker, sh(script, limits=Limits(io_read_bps=10 * 1000 * 1000)))
    assert st.exit_code == 0, out
    millis = int(out.decode().split()[-1])
    assert 1500 <= millis <= 4000, f"20 MiB took {millis} ms under a 10 MB/s limit"


async def test_limits_over_the_server_maximum_are_refused(tmp_path: Path) -> None:
    require_root()
    async with JobTracker(
        TrackerConfig(
            data_dir=tmp_path / "d",
            cgroup_name=unique_name(),
            max_limits=Limits(memory=64 << 20),
            network_default=NetworkMode.NONE,
        )
    ) as tracker:
        with pytest.raises(InvalidRequestError, match="above this server's maximum"):
            await tracker.start("alex", sh("true", limits=Limits(memory=128 << 20)))
        # An unset limit takes the maximum rather than running unbounded.
        status = await tracker.start("alex", sh("sleep 5"))
        assert status.spec.limits.memory == 64 << 20
        await tracker.stop("alex", status.job_id, grace=0)


# ---- stop ---------------------------------------------------------------------------


async def test_stop_kills_a_sigterm_ignoring_command_and_a_double_forked_grandchild(
    tracker: JobTracker,
) -> None:
    marker = f"{uuid.uuid4().int % 10**9 + 10**9}"  # a unique sleep duration names the grandchild
    script = f"""
        trap '' TERM
        sh -c "trap '' TERM; (sleep {marker} &) ; exec sleep 1000" &
        echo ready
        while :; do sleep 1; done
    """
    status = await tracker.start("alex", sh(script))
    async with tracker.subscribe("alex", status.job_id) as chunks:
        assert await chunks.receive() == b"ready\n"
    await eventually(
        lambda: processes_running("sleep", marker), timeout=5, what="the grandchild runs"
    )
    t0 = time.monotonic()
    final = await tracker.stop("alex", status.job_id, grace=0.5)
    assert time.monotonic() - t0 >= 0.5  # it ignored SIGTERM, so it waited out the grace
    assert final.outcome is Outcome.STOPPED and final.stopped_by_user
    assert final.signal == 9
    assert processes_running("sleep", marker) == []
    assert cgroup_pids(tracker.config.cgroup_name, status.job_id) == []
    assert job_cgroup_dirs(tracker.config.cgroup_name, status.job_id) == []
    # Stopping a terminated job is fine and changes nothing.
    again = await tracker.stop("alex", status.job_id)
    assert again == final


async def test_stop_of_a_cooperative_job_takes_no_grace(tracker: JobTracker) -> None:
    status = await tracker.start("alex", sh("sleep 1000"))
    t0 = time.monotonic()
    final = await tracker.stop("alex", status.job_id, grace=30)
    assert time.monotonic() - t0 < 2
    assert final.exit_code == 143 and final.signal == 15


async def test_a_cancelled_stop_still_stops_the_job(tracker: JobTracker) -> None:
    status = await tracker.start("alex", sh("trap '' TERM; while :; do sleep 1; done"))
    with trio.move_on_after(0.1):
        await tracker.stop("alex", status.job_id, grace=0.3)
    with trio.fail_after(5):
        async with tracker.subscribe("alex", status.job_id) as chunks:
            async for _ in chunks:
                pass
    assert tracker.status("alex", status.job_id).state is JobState.TERMINATED


# ---- time limit ----------------------------------------------------------------------


async def test_a_job_past_its_time_limit_is_stopped_and_its_outcome_is_timed_out(
    tracker: JobTracker,
) -> None:
    """The limit's stop is a real stop: SIGTERM, the grace (2 s here), then SIGKILL to
    the whole cgroup; this command ignores SIGTERM, so it takes all three."""
    script = "trap '' TERM; echo ready; while :; do sleep 1; done"
    status = await tracker.start("alex", sh(script, limits=Limits(timeout=1.0)))
    assert status.spec.limits.timeout == 1.0
    with trio.fail_after(scaled(15)):
        final = await tracker.wait("alex", status.job_id)
    assert final.outcome is Outcome.TIMED_OUT and not final.stopped_by_user
    assert (final.signal, final.exit_code) == (9, 137)
    assert final.started_at is not None and final.ended_at is not None
    ran = final.ended_at - final.started_at
    assert 1.0 + 2.0 - 0.1 <= ran <= 1.0 + 2.0 + scaled(3), ran
    assert cgroup_pids(tracker.config.cgroup_name, status.job_id) == []


async def test_a_job_within_its_time_limit_or_stopped_first_is_not_timed_out(
    tracker: JobTracker,
) -> None:
    quick = await tracker.start("alex", sh("sleep 0.2; exit 4", limits=Limits(timeout=30.0)))
    with trio.fail_after(scaled(10)):
        final = await tracker.wait("alex", quick.job_id)
    assert (final.outcome, final.exit_code) == (Outcome.EXITED, 4)
    stopped = await tracker.start("alex", sh("sleep 600", limits=Limits(timeout=1.0)))
    final = await tracker.stop("alex", stopped.job_id, grace=5)
    assert final.outcome is Outcome.STOPPED
    await trio.sleep(1.5)  # past the limit: it changes nothing now
    assert tracker.status("alex", stopped.job_id) == final


async def test_the_servers_time_limits_are_a_default_and_a_maximum(tmp_path: Path) -> None:
    require_root()
    async with JobTracker(
        TrackerConfig(
            data_dir=tmp_path / "d",
            cgroup_name=unique_name(),
            default_limits=Limits(timeout=600.0),
            max_limits=Limits(timeout=3600.0),
            network_default=NetworkMode.NONE,
        )
    ) as tracker:
        with pytest.raises(
            InvalidRequestError, match="time limit 2h is above this server's maximum of 1h"
        ):
            await tracker.start("alex", sh("true", limits=Limits(timeout=7200.0)))
        status = await tracker.start("alex", sh("sleep 5"))
        assert status.spec.limits.timeout == 600.0
        await tracker.stop("alex", status.job_id, grace=0)
    with pytest.raises(InvalidRequestError, match="time limit must be between 100ms and 366d"):
        Limits(timeout=0.0)


# ---- owners and bad input --------------------------------------------------------------


async def test_only_the_owner_or_an_admin_sees_a_job(tracker: JobTracker) -> None:
    status = await tracker.start("alex", sh("sleep 30"))
    with pytest.raises(AccessDeniedError, match="^access denied$"):
        tracker.status("betty", status.job_id)
    with pytest.raises(AccessDeniedError):
        await tracker.stop("betty", status.job_id)
    with pytest.raises(AccessDeniedError):
        async with tracker.subscribe("betty", status.job_id):
            pass
    assert tracker.list("betty") == []
    assert [s.job_id for s in tracker.list("alex")] == [status.job_id]
    assert tracker.status("root", status.job_id, admin=True).owner == "alex"
    assert [s.job_id for s in tracker.list("root", admin=True)] == [status.job_id]
    with pytest.raises(JobNotFoundError, match="no job of yours is named 'nope'"):
        tracker.status("alex", "nope")
    assert tracker.status("alex", status.job_id).state is JobState.ACTIVE
    await tracker.stop("alex", status.job_id, grace=0)


async def test_a_job_checks_and_cuts_its_argv_once_not_on_every_listing(
    tracker: JobTracker,
) -> None:
    """A listing of jobs with ~1 MiB argvs used to build (and check) each job's
    whole spec again on every call, a millisecond of event loop per job that one
    user could make others wait for by listing in a loop. Each job now keeps its
    spec and its cut form: listings and statuses hand over the same objects."""
    big = ("true", *["x" * 120_000] * 8)
    _, status = await run_to_end(tracker, JobSpec(argv=big))
    first, again = tracker.list("alex"), tracker.list("alex")
    assert first[0].argv_cut and first[0].spec.argv[0] == "true"
    assert sum(len(arg) + 1 for arg in first[0].spec.argv) <= MAX_LISTED_ARGS_BYTES
    assert again[0].spec is first[0].spec
    whole = tracker.status("alex", status.job_id)
    assert whole.spec.argv == big and not whole.argv_cut
    assert tracker.status("alex", status.job_id).spec is whole.spec


async def test_bad_requests_change_nothing(tracker: JobTracker) -> None:
    with pytest.raises(AccessDeniedError, match="network mode host"):
        await tracker.start("alex", sh("true", network=NetworkMode.HOST))
    assert tracker.list("alex") == []
    status = await tracker.start("alex", sh("sleep 30"))
    with pytest.raises(InvalidRequestError, match="grace period"):
        await tracker.stop("alex", status.job_id, grace=-1)
    with pytest.raises(InvalidRequestError, match="offset"):
        async with tracker.subscribe("alex", status.job_id, offset=-1):
            pass
    assert tracker.status("alex", status.job_id).state is JobState.ACTIVE
    await tracker.stop("alex", status.job_id, grace=0)


async def test_io_limits_need_a_block_device(tmp_path: Path) -> None:
    require_root()
    data = Path("/dev/shm") / unique_name()
    try:
        async with JobTracker(TrackerConfig(data_dir=data, cgroup_name=unique_name())) as tracker:
            with pytest.raises(InvalidRequestError, match="block device"):
                await tracker.start("alex", sh("true", limits=Limits(io_read_bps=1 << 20)))
            assert tracker.list("alex") == []
    finally:
        os.system(f"rm -rf {data}")


async def test_a_data_dir_that_is_not_writable_is_a_setup_error(tmp_path: Path) -> None:
    require_root()
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(SetupError, match="not writable"):
        async with JobTracker(
            TrackerConfig(data_dir=blocker / "data", cgroup_name="jobworker-test-unused")
        ):
            pass


# ---- output -----------------------------------------------------------------------------


async def test_a_late_subscriber_gets_every_byte_of_a_binary_stream(tracker: JobTracker) -> None:
    script = "for i in $(seq 16); do head -c 262144 /dev/urandom | tee -a ./copy; done; sha256sum ./copy >&2"
    status = await tracker.start("alex", sh(script))
    await eventually(
        lambda: tracker.status("alex", status.job_id).state is JobState.TERMINATED,
        timeout=scaled(10),  # 4 MiB through tee: ~10 s on the VM's emulated CPU
        what="the job terminates",
    )
    out = bytearray()
    async with tracker.subscribe("alex", status.job_id) as chunks:
        async for chunk in chunks:
            out += chunk
    payload, trailer = bytes(out[: 16 * 262144]), bytes(out[16 * 262144 :])
    assert trailer.split()[0].decode() == hashlib.sha256(payload).hexdigest()


async def test_hundred_subscribers_all_get_identical_output(tracker: JobTracker) -> None:
    status = await tracker.start(
        "alex", sh("head -c 4000000 /dev/urandom; sleep 0.2; head -c 1000000 /dev/urandom")
    )
    digests: list[str] = []

    async def follow() -> None:
        h = hashlib.sha256()
        async with tracker.subscribe("alex", status.job_id) as chunks:
            async for chunk in chunks:
                h.update(chunk)
        digests.append(h.hexdigest())

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(follow)
    assert len(digests) == 100 and len(set(digests)) == 1
    assert tracker.status("alex", status.job_id).output_size == 5_000_000


async def test_a_stuck_subscriber_does_not_slow_the_job(tracker: JobTracker) -> None:
    status = await tracker.start("alex", sh("head -c 50000000 /dev/zero"))
    async with tracker.subscribe("alex", status.job_id) as stuck:
        assert await stuck.receive()
        await eventually(
            lambda: tracker.status("alex", status.job_id).state is JobState.TERMINATED,
            timeout=10,
            what="the job terminates while its subscriber is stuck",
        )
    assert tracker.status("alex", status.job_id).output_size == 50_000_000


async def test_a_cancelled_subscriber_leaves_no_task(tracker: JobTracker) -> None:
    status = await tracker.start("alex", sh("while :; do echo tick; sleep 0.05; done"))
    async with LeakCheck(processes=False):
        with trio.move_on_after(0.3):
            async with tracker.subscribe("alex", status.job_id) as chunks:
                async for _ in chunks:
                    pass
    await tracker.stop("alex", status.job_id, grace=0)


# ---- the tracker's own life ---------------------------------------------------------------


async def test_cancelling_the_tracker_stops_every_job_and_leaves_nothing(tmp_path: Path) -> None:
    require_root()
    name = unique_name()
    before_children = child_pids()
    async with LeakCheck():
        with trio.move_on_after(1.0):
            async with JobTracker(
                TrackerConfig(
                    data_dir=tmp_path / "data",
                    cgroup_name=name,
                    stop_grace=0.5,
                    network_default=NetworkMode.NONE,
                )
            ) as tracker:
                for script in [
                    "sleep 1000",
                    "trap '' TERM; while :; do sleep 1; done",
                    "yes > /dev/null",
                ]:
                    await tracker.start("alex", sh(script))
                await trio.sleep_forever()
    assert child_pids() == before_children
    assert not cgroups_named(name)
    assert_only_records_left(tmp_path / "data")
    with pytest.raises(ShuttingDownError):
        await tracker.start("alex", sh("true"))


async def test_leftover_cgroups_of_a_crashed_run_are_killed_and_removed(tmp_path: Path) -> None:
    """A daemon killed with -9 leaves job cgroups (with processes) behind; the next start clears them."""
    require_root()
    name = unique_name()
    driver = detect(name=name)
    stale = driver.create("stale-job", Limits(), None)
    grouped = driver.create("stale-grouped-job", Limits(), None, owner="alex")
    procs = [
        await trio.lowlevel.open_process(
            ["sh", "-c", f"echo $$ > {cgroup.procs_files[0]}; exec sleep 1000"]
        )
        for cgroup in (stale, grouped)
    ]
    for proc, cgroup in zip(procs, (stale, grouped), strict=True):
        await eventually(
            lambda: proc.pid in cgroup.pids(),  # noqa: B023 (awaited in this iteration)
            timeout=5,
            what="the pid is in the cgroup",
        )
    driver.close()  # as the crash would: the parent stays (busy), its lock goes
    async with JobTracker(TrackerConfig(data_dir=tmp_path / "data", cgroup_name=name)):
        with trio.fail_after(5):
            for proc in procs:
                await proc.wait()
        assert not any(p.parent.exists() for p in stale.procs_files)
        assert not any(p.parent.parent.exists() for p in grouped.procs_files)  # alex's group


async def test_a_job_outlives_trios_idle_worker_threads(tracker: JobTracker) -> None:
    """bubblewrap's --die-with-parent follows the *thread* that forked it. Jobs forked from
    a trio worker thread were SIGKILLed when trio retired that thread, 10 s after it idled."""
    status = await tracker.start("alex", sh("sleep 30"))
    await trio.sleep(11.5)  # the behaviour under test: trio retires a thread idle for 10 s
    assert tracker.status("alex", status.job_id).state is JobState.ACTIVE
    final = await tracker.stop("alex", status.job_id, grace=5)
    assert final.signal == 15  # our SIGTERM, not a SIGKILL from a dead parent thread


async def test_a_host_where_bubblewrap_is_missing_or_cannot_sandbox_is_a_setup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jwsd refuses to start, with the reason, instead of failing every job later."""
    require_root()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["sh", "setpriv"]:
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(
        SetupError,
        match=r"bwrap not found: jobworker needs bubblewrap \(apt-get install bubblewrap\)",
    ):
        async with JobTracker(
            TrackerConfig(data_dir=tmp_path / "data", cgroup_name="jobworker-test-unused")
        ):
            pass
    fake = bin_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(
        SetupError, match="cannot build a sandbox here as nobody: bwrap: No permissions"
    ):
        async with JobTracker(
            TrackerConfig(data_dir=tmp_path / "data", cgroup_name="jobworker-test-unused")
        ):
            pass


class CancelAtStep(trio.abc.Instrument):
    """Cancels `scope` just before `task` runs its `step`th step: wherever the task
    stopped to let others run (a checkpoint, a wait that has already ended), the
    cancellation is what it finds next. Deterministic, unlike a timer."""

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope, step: int) -> None:
        self.task, self.scope, self.step, self.steps = task, scope, step, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.step:
                self.scope.cancel()


async def test_a_start_cancelled_at_any_point_leaves_nothing_behind(tracker: JobTracker) -> None:
    """A client that hangs up during StartJob: whatever step the start was at (cgroup made,
    process forked, sandbox half-built, sandbox ready), no process, cgroup, dir or entry
    is left, and every process it forked is reaped. The start is cancelled before its
    1st, 2nd, 3rd... step in turn, until one runs to its end uncancelled."""
    children = child_pids()
    task = trio.lowlevel.current_task()
    step, cancelled = 0, 0
    while True:
        step += 1
        with trio.CancelScope() as scope:
            instrument = CancelAtStep(task, scope, step)
            trio.lowlevel.add_instrument(instrument)
            try:
                status = await tracker.start("alex", sh("sleep 1000"))
            finally:
                trio.lowlevel.remove_instrument(instrument)
        if not scope.cancelled_caught:
            break
        cancelled += 1
        assert tracker.list("alex") == [], f"cancelled before step {step}: an entry is left"
        await eventually(
            lambda: not child_pids() - children,
            timeout=scaled(5),
            what=f"every child of a start cancelled before step {step} is reaped",
        )
        gc.collect()  # a Popen dropped unreaped warns here ("subprocess N is still running")
    await tracker.stop("alex", status.job_id, grace=0)
    assert cancelled >= 3, f"the start took only {step} steps; is it still asynchronous?"
    await eventually(lambda: not child_pids() - children, timeout=scaled(5), what="children reaped")
    live_jobs = {s.job_id for s in tracker.list("alex")}
    parents = cgroups_named(tracker.config.cgroup_name)
    assert parents, "the job parent was not found"
    for parent in parents:
        assert [d.name for d in parent.iterdir() if d.is_dir()] == []
    assert {d.name for d in (tracker.config.data_dir / "jobs").iterdir()} <= live_jobs


async def test_a_stopped_job_whose_status_file_is_gone_is_restored_as_stopped(
    tmp_path: Path,
) -> None:
    """A record that says a stop was asked for, whose supervisor is gone and whose
    status file is missing: the job was SIGKILLed with its cgroup, so it is restored
    as stopped (137), ended when jwsd found it; jwsd still starts."""
    require_root()
    data = tmp_path / "data"
    (data / "jobs" / "a0000000-0000-4000-8000-000000000000").mkdir(parents=True)
    store = JobStore.open(data / "jobs.db")
    store.put_blocking(
        JobRecord(
            job_id="a0000000-0000-4000-8000-000000000000",
            owner="alex",
            argv=("sleep", "60"),
            state=JobState.ACTIVE.value,
            created_at=time.time() - 10,
            started_at=time.time() - 9,
            stop_requested=True,
            supervisor_pid=2**22 - 1,  # above any pid_max in use: no such process
            supervisor_start=1,
            command_pid=2**22 - 2,
        )
    )
    store.close()
    before = time.time()
    async with JobTracker(TrackerConfig(data_dir=data, cgroup_name=unique_name())) as tracker:
        status = tracker.status("alex", "a0000000-0000-4000-8000-000000000000")
    assert status.state is JobState.TERMINATED and status.outcome is Outcome.STOPPED
    assert (status.exit_code, status.signal) == (137, 9)
    assert status.ended_at is not None and status.ended_at >= before
