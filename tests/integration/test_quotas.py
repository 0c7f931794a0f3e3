"""JobTracker's quotas and retention on the real kernel: jobs running per user,
output kept per job (cap and full disk), the work dir's size, finished jobs
forgotten by count, by age and on request, and a finished job's output on disk.

Every test here needs root (cgroups, bubblewrap, tmpfs mounts).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from jobworker.errors import (
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    QuotaExceededError,
)
from jobworker.jobs.retention import RetentionPolicy
from jobworker.jobs.store import JobStore
from jobworker.jobs.tracker import STORE_NAME, JobTracker
from jobworker.model import JobSpec, JobState, JobStatus, Limits, Outcome
from tests.support.timing import scaled
from tests.support.tracking import running_tracker
from tests.support.waiting import eventually

pytestmark = pytest.mark.root

MiB = 1 << 20


@contextlib.asynccontextmanager
async def tracker_at(
    data_dir: Path, *, check_records: bool = True, **kwargs: Any
) -> AsyncIterator[JobTracker]:
    """`running_tracker`, then no mount of a work dir may be left on the host."""
    async with running_tracker(
        data_dir, check_records=check_records, stop_grace=1.0, **kwargs
    ) as tracker:
        yield tracker
    assert mounts_below(data_dir) == [], "mounts left behind on the host"


def mounts_below(directory: Path) -> list[str]:
    """The host's mount points inside `directory` (work dirs are the sandboxes' own)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        points = [line.split()[4] for line in info]
    return [point for point in points if point.startswith(f"{directory}/")]


def sh(script: str, **kwargs: Any) -> JobSpec:
    return JobSpec(argv=("sh", "-c", script), **kwargs)


async def finish(tracker: JobTracker, owner: str, job_id: str) -> tuple[bytes, JobStatus]:
    """Every byte of the job's output, and its status once Terminated and on disk."""
    out = bytearray()
    async with contextlib.aclosing(tracker.follow(owner, job_id)) as chunks:
        async for chunk in chunks:
            out += chunk
    status = await tracker.wait(owner, job_id)
    assert status.state is JobState.TERMINATED
    return bytes(out), status


async def run(tracker: JobTracker, spec: JobSpec, owner: str = "alex") -> tuple[bytes, JobStatus]:
    status = await tracker.start(owner, spec)
    return await finish(tracker, owner, status.job_id)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` on `path` (a full disk on demand)."""
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---- running jobs per user ---------------------------------------------------------


async def test_the_running_quota_refuses_one_more_and_accepts_again_after_one_ends(
    tmp_path: Path,
) -> None:
    async with tracker_at(tmp_path / "data", max_running_per_user=2) as tracker:
        first = await tracker.start("alex", sh("sleep 60"))
        await tracker.start("alex", sh("sleep 60"))
        with pytest.raises(QuotaExceededError, match="already run 2 jobs"):
            await tracker.start("alex", sh("true"))
        assert len(tracker.list("alex")) == 2  # the refused start left nothing
        # Another user's quota is their own.
        other = await tracker.start("betty", sh("sleep 60"))
        await tracker.stop("alex", first.job_id, grace=0)
        third = await tracker.start("alex", sh("echo ok"))
        out, _ = await finish(tracker, "alex", third.job_id)
        assert out == b"ok\n"
        await tracker.stop("betty", other.job_id, grace=0)


async def test_an_owners_concurrent_first_starts_keep_to_the_running_quota(
    tmp_path: Path,
) -> None:
    """A new owner's first start awaits their host uid; starts that came meanwhile
    passed the quota check before it, and must check again after it."""
    started: list[str] = []
    refused: list[QuotaExceededError] = []

    async def one(tracker: JobTracker) -> None:
        try:
            started.append((await tracker.start("alex", sh("sleep 60"))).job_id)
        except QuotaExceededError as error:
            refused.append(error)

    async with tracker_at(tmp_path / "data", max_running_per_user=2) as tracker:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one, tracker)
        assert (len(started), len(refused)) == (2, 4)
        for job_id in started:
            await tracker.stop("alex", job_id, grace=0)


async def test_failed_starts_do_not_use_up_the_quota(tmp_path: Path) -> None:
    async with tracker_at(tmp_path / "data", max_running_per_user=1) as tracker:
        for _ in range(3):
            with pytest.raises(Exception, match="not found|no such"):
                await tracker.start("alex", JobSpec(argv=("/nonexistent/program",)))
        _, status = await run(tracker, sh("exit 0"))
        assert status.exit_code == 0


# ---- the output cap and a full disk ------------------------------------------------------


async def test_output_past_its_limit_is_not_kept_and_the_job_learns_at_its_next_write(
    tmp_path: Path,
) -> None:
    """`yes` under a 100,000-byte output limit: exactly that many bytes are kept, status
    says the output was truncated and why, and the job ends by SIGPIPE (as under
    `yes | head -c 100000`) instead of running on."""
    async with tracker_at(tmp_path / "data") as tracker:
        with trio.fail_after(10):
            out, status = await run(tracker, JobSpec(argv=("yes",), limits=Limits(output=100_000)))
        assert out == b"y\n" * 50_000
        assert status.output_size == 100_000 and status.spec.limits.output == 100_000
        assert status.output_truncated is not None
        assert "output limit of 100000 bytes" in status.output_truncated
        assert (status.outcome, status.signal_name) == (Outcome.SIGNALED, "SIGPIPE")


async def test_the_server_output_limit_applies_when_a_job_asks_none_and_bounds_what_it_asks(
    tmp_path: Path,
) -> None:
    async with tracker_at(tmp_path / "data", max_output=4096) as tracker:
        out, status = await run(tracker, sh("head -c 10000 /dev/zero"))
        assert len(out) == 4096 and status.output_truncated is not None
        assert status.spec.limits.output == 4096
        with pytest.raises(
            InvalidRequestError,
            match="output limit 8.0 KiB is above this server.s maximum of 4.0 KiB",
        ):
            await tracker.start("alex", sh("true", limits=Limits(output=8192)))
        out, status = await run(tracker, sh("echo fits", limits=Limits(output=100)))
        assert out == b"fits\n" and status.output_truncated is None


async def test_a_full_disk_while_writing_output_shows_in_status_and_keeps_the_exit_code(
    tmp_path: Path,
) -> None:
    """The data dir on a 4 MiB tmpfs; a job writes 12 MiB of output and exits 0:
    its status keeps exit code 0 and says output was lost, and why; the record of its
    end still fits, in the space the store's reserve gave back (issue 18 item 6:
    before the reserve it did not, and the status said so)."""
    with small_tmpfs(tmp_path / "small", "4m") as data:
        async with tracker_at(data / "data", check_records=False) as tracker:
            started = await tracker.start("alex", sh("head -c 12582912 /dev/zero; exit 0"))
            status = await tracker.wait("alex", started.job_id)
            assert (status.outcome, status.exit_code) == (Outcome.EXITED, 0)
            assert status.output_truncated is not None
            assert "No space left on device" in status.output_truncated
            assert status.outcome_reason is None
            with pytest.raises(BadStateError, match="lost"):
                await finish(tracker, "alex", status.job_id)
        store = JobStore.open(data / "data" / STORE_NAME)
        try:
            assert [(r.state, r.exit_code) for r in store.load()] == [(JobState.TERMINATED, 0)]
        finally:
            store.close()


# ---- the work dir -------------------------------------------------------------------------


async def test_a_job_cannot_write_more_than_its_work_dir_size_and_others_keep_their_output(
    tmp_path: Path,
) -> None:
    """A 16 MiB work dir: writing 64 MiB into it fails with ENOSPC at 16 MiB, status
    shows what the work dir held; meanwhile another user's job, whose output goes
    to the data dir (a 48 MiB disk here, which the work dir would otherwise fill),
    keeps every byte of its 24 MiB output."""
    with small_tmpfs(tmp_path / "small", "48m") as data:
        async with tracker_at(data / "data", workdir_size=16 * MiB) as tracker:
            filler = await tracker.start(
                "alex",
                sh(
                    "head -c 67108864 /dev/zero > big; echo wrote $(stat -c %s big); "
                    "echo used $(du -sk . | cut -f1); sleep 60"
                ),
            )
            other = await tracker.start("betty", sh("head -c 25165824 /dev/zero"))
            out, status = await finish(tracker, "betty", other.job_id)
            assert len(out) == 24 * MiB and status.output_truncated is None
            assert status.output_disk_bytes == 24 * MiB
            lines = b""
            async with tracker.subscribe("alex", filler.job_id) as chunks:
                while lines.count(b"\n") < 3:
                    lines += await chunks.receive()
            assert b"No space left on device" in lines
            wrote = int(lines.split(b"wrote ")[1].split()[0])
            assert 15 * MiB <= wrote <= 16 * MiB, lines
            running = tracker.status("alex", filler.job_id)
            assert 15 * MiB <= running.workdir_bytes <= 16 * MiB
            final = await tracker.stop("alex", filler.job_id, grace=0)
            assert 15 * MiB <= final.workdir_bytes <= 16 * MiB  # the last reading


async def test_no_job_holds_another_jobs_work_dir_in_its_sandbox(tmp_path: Path) -> None:
    """A sandbox's mount table has its own work dir and no other job's, not even
    covered by the data dir's tmpfs: a copy there would keep a finished job's tmpfs
    (its pages) alive as long as the sandbox lives, and a host mount or unmount of
    one made another job's sandbox build fail (bubblewrap remounts each mount it
    copied read-only, and one that went meanwhile gives EINVAL)."""
    async with tracker_at(tmp_path / "data", workdir_size=4 * MiB) as tracker:
        first = await tracker.start("alex", sh("sleep 60"))
        out, status = await finish(
            tracker, "betty", (await tracker.start("betty", sh("cat /proc/self/mountinfo"))).job_id
        )
        assert status.exit_code == 0, out
        assert first.job_id.encode() not in out, out
        assert status.job_id.encode() in out, out  # its own work dir is a mount
        await tracker.stop("alex", first.job_id, grace=0)


# ---- a finished job's output, forgetting jobs ---------------------------------------------


async def test_a_finished_jobs_output_is_on_disk_and_not_in_memory(tmp_path: Path) -> None:
    async with tracker_at(tmp_path / "data") as tracker:
        out, status = await run(tracker, sh("head -c 3000000 /dev/urandom"))
        assert status.output_disk_bytes == status.output_size == 3_000_000
        log = tracker.config.data_dir / "jobs" / status.job_id / "output.log"
        assert log.read_bytes() == out


async def test_remove_refuses_a_running_job_then_forgets_it_once_ended(tmp_path: Path) -> None:
    async with tracker_at(tmp_path / "data") as tracker:
        status = await tracker.start("alex", sh("echo hi; sleep 60"))
        with pytest.raises(BadStateError, match="still running"):
            await tracker.remove("alex", status.job_id)
        await tracker.stop("alex", status.job_id, grace=0)
        directory = tracker.config.data_dir / "jobs" / status.job_id
        assert directory.exists()
        await tracker.remove("alex", status.job_id)
        assert not directory.exists()
        with pytest.raises(JobNotFoundError):
            tracker.status("alex", status.job_id)
        with pytest.raises(JobNotFoundError):
            await tracker.remove("alex", status.job_id)


async def test_the_count_per_user_holds_for_jobs_restored_at_start_up(tmp_path: Path) -> None:
    """A tracker started on records of more finished jobs than --max-finished keeps
    (an earlier run with a higher limit, or a crash loop) forgets the oldest at once."""
    data = tmp_path / "data"
    async with tracker_at(
        data, retention=RetentionPolicy(max_age=None, max_per_owner=10)
    ) as tracker:
        ids = [(await run(tracker, sh(f"echo {i}")))[1].job_id for i in range(4)]
    policy = RetentionPolicy(max_age=None, max_per_owner=2)
    async with tracker_at(data, retention=policy) as tracker:
        await eventually(
            lambda: [job.job_id for job in tracker.list("alex")] == ids[2:],
            timeout=scaled(10),
            what="the oldest restored jobs forgotten",
        )
        # Their files go after their entries (a crash in between leaves no files
        # without a record).
        await eventually(
            lambda: sorted(d.name for d in (data / "jobs").iterdir()) == sorted(ids[2:]),
            timeout=scaled(10),
            what="the oldest restored jobs' dirs deleted",
        )


async def test_finished_jobs_beyond_the_count_per_user_are_forgotten_oldest_first(
    tmp_path: Path,
) -> None:
    policy = RetentionPolicy(max_age=None, max_per_owner=2)
    async with tracker_at(tmp_path / "data", retention=policy) as tracker:
        ids = []
        for i in range(4):
            _, status = await run(tracker, sh(f"echo {i}"))
            ids.append(status.job_id)
        _, betty = await run(tracker, sh("echo b"), owner="betty")
        assert [job.job_id for job in tracker.list("alex")] == ids[2:]
        for job_id in ids[:2]:
            with pytest.raises(JobNotFoundError):
                tracker.status("alex", job_id)
        assert tracker.status("betty", betty.job_id).exit_code == 0
        assert len(list((tmp_path / "data" / "jobs").iterdir())) == 3
        # Running jobs never count, and are never forgotten.
        running = await tracker.start("alex", sh("sleep 60"))
        _, status = await run(tracker, sh("true"))
        assert tracker.status("alex", running.job_id).state is JobState.ACTIVE
        assert [job.job_id for job in tracker.list("alex")] == [
            ids[3],
            running.job_id,
            status.job_id,
        ]
        await tracker.stop("alex", running.job_id, grace=0)


async def test_finished_jobs_older_than_the_retention_are_forgotten(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """With trio's clock: a job that ended is kept until the retention has passed
    since then, and forgotten (record and files) as soon as it has."""
    mock_clock.rate = 1.0  # real time for the jobs; jumps for the retention
    policy = RetentionPolicy(max_age=3600, max_per_owner=None)
    async with tracker_at(tmp_path / "data", retention=policy) as tracker:
        _, old = await run(tracker, sh("echo old"))
        old_end = trio.current_time()  # at or after the tracker's clock of its end
        mock_clock.jump(1800)
        _, new = await run(tracker, sh("echo new"))
        jobs_dir = tmp_path / "data" / "jobs"
        # The clock runs in real time too: the new job's run and the checks below take
        # real seconds (tens of them on an emulated CPU), so the jumps are measured
        # from the old job's end, with a margin for the checks.
        margin = scaled(10)
        mock_clock.jump(max(0.0, old_end + 3600 - margin - trio.current_time()))
        await trio.testing.wait_all_tasks_blocked()  # the collector ran, had anything expired
        assert tracker.status("alex", old.job_id).exit_code == 0
        mock_clock.jump(margin + 1)
        await eventually(
            lambda: [j.job_id for j in tracker.list("alex")] == [new.job_id],
            timeout=scaled(5),
            what="the old job forgotten",
        )
        await eventually(
            lambda: [p.name for p in jobs_dir.iterdir()] == [new.job_id],
            timeout=scaled(5),
            what="its job dir deleted (in a worker thread)",
        )
        mock_clock.jump(3600)  # past the new job's end + retention, however long it ran
        await eventually(
            lambda: tracker.list("alex") == [], timeout=scaled(5), what="the new one forgotten"
        )
