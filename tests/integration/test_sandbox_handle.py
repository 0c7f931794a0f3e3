"""The sandbox facade on the real kernel: a job started through `Sandbox.prepare` and
`StartingJob.launch`, its command let run by `RunningJob.release` (once its network
is set up), ended by `RunningJob.finish`, let go and found again by
`Sandbox.attach`, or seen by `Sandbox.inspect` once it ended unwatched; and a start
that fails or is cancelled leaves nothing on the host.

Every test here needs root (cgroups, bubblewrap as a privilege-dropping root).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from jobworker.errors import StartFailedError
from jobworker.model import Limits, NetworkMode
from jobworker.sandbox import OUTPUT_NAME, HostSetup, JobRequest, Sandbox
from tests.conftest import require_root
from tests.support.cgroupfs import job_cgroup_dirs
from tests.support.leaks import LeakCheck
from tests.support.names import unique_name
from tests.support.remote_host import RemoteHost
from tests.support.timing import scaled
from tests.support.waiting import eventually

pytestmark = pytest.mark.root


@attrs.frozen
class Host:
    sandbox: Sandbox
    cgroup_name: str
    jobs: Path

    def request(self, script: str, **fields: object) -> JobRequest:
        job_id = str(uuid.uuid4())
        directory = self.jobs / job_id
        request = JobRequest(
            job_id=job_id,
            owner="alex",
            directory=directory,
            user=self.sandbox.host.user,
            argv=("sh", "-c", script),
            env=self.sandbox.default_env(directory / "work"),
            cwd=str(directory / "work"),
            limits=Limits(),
        )
        return attrs.evolve(request, **fields)

    def cgroup_dirs(self, request: JobRequest) -> list[Path]:
        return job_cgroup_dirs(self.cgroup_name, request.job_id)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    require_root()
    data = tmp_path / "data"
    jobs = data / "jobs"
    jobs.mkdir(parents=True)
    for directory in (data, jobs):
        os.chmod(directory, 0o711)
    cgroup_name = unique_name()
    sandbox = Sandbox.open(
        HostSetup.check("nobody", data_dir=data),
        data,
        cgroup_name=cgroup_name,
        workdir_size=1 << 20,
    )
    try:
        yield Host(sandbox, cgroup_name, jobs)
    finally:
        sandbox.cleanup_stale()
        sandbox.close()


async def test_a_finished_job_reports_how_it_ended_and_leaves_only_its_files(host: Host) -> None:
    """finish() returns the exit code, usage and work dir reading, and removes the cgroup;
    the output file and the status file stay (the job's record points at them)."""
    request = host.request("echo hi; head -c 4096 /dev/zero > f; exit 3")
    async with LeakCheck():
        starting = host.sandbox.prepare(request)
        running = await starting.launch()
        await running.release()
        assert sorted(running.cgroup_dirs) == host.cgroup_dirs(request)
        processes = running.processes
        assert processes.supervisor_start is not None and processes.command_pid is not None
        await running.wait()
        with trio.CancelScope(shield=True):
            ending = await running.finish()
    assert (ending.exit_code, ending.signal, ending.copier_failure) == (3, None, None)
    assert ending.usage is not None and ending.usage.cpu_ns > 0
    assert ending.workdir_bytes is not None and ending.workdir_bytes >= 4096
    assert running.usage() == ending.usage  # the last reading, once the cgroup is gone
    assert host.cgroup_dirs(request) == []
    assert (request.directory / OUTPUT_NAME).read_bytes() == b"hi\n"
    running.signal(signal.SIGTERM)  # its leader is in no cgroup of the job: nothing is sent


async def test_an_outbound_jobs_command_runs_only_once_released(
    host: Host, remote_host: RemoteHost
) -> None:
    """launch() returns at the sandbox's ready line, before an outbound job's network
    is set up (pasta, ~40 ms, off the start's critical path): the command has not
    run, and runs once release() has set it up. A job closed unreleased (jwsd gone
    first) never runs its command, and its output says so."""
    request = host.request("echo ran", network=NetworkMode.OUTBOUND)
    running = await host.sandbox.prepare(request).launch()
    output = request.directory / OUTPUT_NAME
    await trio.sleep(scaled(0.2))
    assert output.read_bytes() == b""
    await running.release()
    with trio.fail_after(scaled(10)):
        await running.wait()
    with trio.CancelScope(shield=True):
        ending = await running.finish()
    assert ending.exit_code == 0 and output.read_bytes() == b"ran\n"
    never = host.request("echo ran", network=NetworkMode.OUTBOUND)
    running = await host.sandbox.prepare(never).launch()
    running.close()  # the answer's socket with it: the ready helper reads EOF
    with trio.fail_after(scaled(10)):
        await running.wait()
    with trio.CancelScope(shield=True):
        ending = await running.finish()
    assert ending.exit_code == 125
    assert (never.directory / OUTPUT_NAME).read_bytes() == (
        b"jobworker: jwsd went away before the command could run\n"
    )


async def test_signal_reaches_the_commands_process_group(host: Host) -> None:
    """signal() delivers to the command (its trap runs); kill() ends everything."""
    request = host.request(
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    )
    starting = host.sandbox.prepare(request)
    running = await starting.launch()
    await running.release()
    output = request.directory / OUTPUT_NAME
    await eventually(lambda: b"ready" in output.read_bytes(), timeout=scaled(10), what="ready")
    running.signal(signal.SIGTERM)
    with trio.fail_after(scaled(10)):
        await running.wait()
    with trio.CancelScope(shield=True):
        ending = await running.finish()
    assert ending.exit_code == 7 and b"got-term" in output.read_bytes()


async def test_a_start_that_fails_leaves_nothing(host: Host) -> None:
    """A sandbox bubblewrap cannot build fails the start with its reason; discard()
    then leaves no process, cgroup, dir or fd."""
    request = host.request("true", cwd="/no/such/dir")
    async with LeakCheck():
        starting = host.sandbox.prepare(request)
        with pytest.raises(StartFailedError, match="could not start"):
            await starting.launch()
        with trio.CancelScope(shield=True):
            await starting.discard()
    assert host.cgroup_dirs(request) == []
    assert not request.directory.exists()


async def test_a_start_cancelled_while_the_sandbox_builds_leaves_nothing(host: Host) -> None:
    async with LeakCheck():
        starting = host.sandbox.prepare(request := host.request("true"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(starting.launch)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await starting.discard()
    assert host.cgroup_dirs(request) == []
    assert not request.directory.exists()


async def test_a_job_let_go_runs_on_and_is_attached_again(host: Host) -> None:
    """let_go() leaves the job running (nothing killed, nothing reaped); attach() finds it
    again from its record's processes, and finishing it then ends it."""
    request = host.request("sleep 60")
    running = await host.sandbox.prepare(request).launch()
    await running.release()
    processes = running.processes
    running.let_go()
    assert processes.supervisor_pid is not None
    os.kill(processes.supervisor_pid, 0)  # still there
    again = host.sandbox.attach(request.job_id, request.owner, request.directory, processes)
    assert again is not None and again.processes == processes
    again.kill()
    with trio.fail_after(scaled(10)):
        await again.wait()
    with trio.CancelScope(shield=True):
        ending = await again.finish()
    assert (ending.exit_code, ending.signal) == (137, signal.SIGKILL)
    assert host.sandbox.attach(request.job_id, request.owner, request.directory, processes) is None


async def test_inspect_shows_what_a_job_that_ended_unwatched_left(host: Host) -> None:
    """A job that ended while let go: inspect() reads its exit code from the status
    file and its usage from the cgroup it left, and changes nothing."""
    request = host.request("exit 5")
    running = await host.sandbox.prepare(request).launch()
    await running.release()
    pid = running.processes.supervisor_pid
    assert pid is not None
    running.let_go()
    # Our child, let go: it stays a zombie until reaped (by init, once jwsd has gone).
    await eventually(lambda: _is_zombie(pid), timeout=scaled(10), what="its exit")
    assert host.sandbox.attach(request.job_id, "alex", request.directory, running.processes) is None
    remains = host.sandbox.inspect(request.job_id, "alex", request.directory)
    assert remains.exit_code == 5 and remains.sandbox_started
    assert remains.usage is not None and remains.status_written_at is not None
    assert host.cgroup_dirs(request) != []  # left for cleanup_stale
    assert host.sandbox.cleanup_stale() == [request.job_id]
    await trio.to_thread.run_sync(os.waitpid, pid, 0)
    never = host.request("true")
    never.directory.mkdir()
    assert host.sandbox.inspect(never.job_id, "alex", never.directory) == type(remains)(
        exit_code=None, usage=None, sandbox_started=False, status_written_at=None
    )


def _is_zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat.rsplit(b")", 1)[1].split()[0] == b"Z"
