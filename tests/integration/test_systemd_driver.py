"""The systemd cgroup driver on a real systemd (PID 1; the CI VM's 252): each job in a
transient scope of its own with its limits, no process of it outside, nothing left
after it; and a bus that never answers fails a start in bounded time, leaving nothing
(that one with a fake bus peer of the test's own, so it runs on any host).

Where systemd is not PID 1 the tests that need it skip, or fail when
JOBWORKER_REQUIRE_SYSTEMD=1 (CI's VM stages) forbids skipping.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from jeepney import HeaderFields, MessageType, new_method_return
from jeepney.low_level import Parser

from jobworker.client import JobWorkerClient
from jobworker.errors import StartFailedError
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, JobState, Limits, Outcome
from jobworker.sandbox.cgroups import systemd_bus
from jobworker.sandbox.cgroups.systemd import SystemdDriver
from tests.conftest import require_root
from tests.support.certs import TestPKI
from tests.support.daemon import DaemonFiles
from tests.support.leaks import LeakCheck
from tests.support.timing import scaled
from tests.support.tracking import run_to_end
from tests.support.waiting import eventually

pytestmark = pytest.mark.root

REQUIRE_SYSTEMD = os.environ.get("JOBWORKER_REQUIRE_SYSTEMD") == "1"
SLICE_DIR = Path("/sys/fs/cgroup") / systemd_bus.TOP_SLICE


def require_systemd() -> None:
    """Skip unless systemd is PID 1 and answers; fail instead under JOBWORKER_REQUIRE_SYSTEMD=1."""
    require_root()
    reason = systemd_bus.available()
    if reason is None:
        return
    if REQUIRE_SYSTEMD:
        pytest.fail(f"JOBWORKER_REQUIRE_SYSTEMD=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture
async def tracker(tmp_path: Path) -> AsyncIterator[JobTracker]:
    require_systemd()
    # Loopback only, as the other tests' trackers: the network is not what these test
    # (and CI's VM has no default route for the shipped default, outbound).
    config = TrackerConfig(
        data_dir=tmp_path / "data", cgroup_driver="systemd", network_default="none"
    )
    async with JobTracker(config) as tracker:
        yield tracker


def unit_state(unit: str) -> str:
    shown = subprocess.run(
        ["systemctl", "show", "-P", "ActiveState", unit], capture_output=True, text=True
    )
    return shown.stdout.strip()


def scope_dir(owner: str, job_id: str) -> Path:
    return SLICE_DIR / systemd_bus.slice_name(owner) / systemd_bus.scope_name(owner, job_id)


def tree_pids(cgroup: Path) -> set[int]:
    found: set[int] = set()
    for procs in cgroup.rglob("cgroup.procs"):
        found.update(int(line) for line in procs.read_text().split())
    return found


# Pure string work: stage 1 (the host) runs it, the v2 VM stage need not.
@pytest.mark.hierarchy_independent
def test_unit_names_are_escaped_as_systemd_escape_does() -> None:
    assert systemd_bus.escape("alex") == "alex"
    assert systemd_bus.escape("a-b c/d.e") == "a\\x2db\\x20c-d.e"
    assert systemd_bus.escape(".hidden") == "\\x2ehidden"
    assert systemd_bus.slice_name("a-b") == "jobworker-a\\x2db.slice"
    long = systemd_bus.scope_name("x" * 300, "id")
    assert len(long) < systemd_bus.UNIT_NAME_MAX and long.startswith("jobworker-\\x5f")


async def test_a_job_runs_in_a_scope_of_its_own_with_its_limits(tracker: JobTracker) -> None:
    limits = Limits(memory=64 << 20, cpu=0.5, pids=20)
    status = await tracker.start("alex", JobSpec(argv=("sleep", "600"), limits=limits))
    scope = scope_dir("alex", status.job_id)
    unit = scope.name
    assert unit_state(unit) == "active"
    description = subprocess.run(
        ["systemctl", "show", "-P", "Description", unit], capture_output=True, text=True
    ).stdout
    assert status.job_id in description and "alex" in description
    job = scope / "job"
    assert (job / "memory.max").read_text().strip() == str(64 << 20)
    assert (job / "cpu.max").read_text().split() == ["50000", "100000"]
    assert int((job / "pids.max").read_text()) >= 20
    # Nothing in the scope's own cgroup (it delegates), the copier in its own leaf.
    assert (scope / "cgroup.procs").read_text() == ""
    assert len((scope / "copier" / "cgroup.procs").read_text().split()) == 1
    assert (job / "cgroup.procs").read_text().split()
    await tracker.stop("alex", status.job_id)
    await eventually(lambda: not scope.exists(), timeout=scaled(10), what="the scope goes")
    await eventually(
        lambda: unit_state(unit) in {"inactive", ""}, timeout=scaled(10), what="the unit goes"
    )


async def test_no_process_of_a_job_is_ever_outside_its_scope(tracker: JobTracker) -> None:
    """bubblewrap made the job's cgroup namespace at its cgroup: "0::/" inside means it
    was in the job's leaf before it built anything (else the path shows "/.."). And
    every process the record names (supervisor, command, copier) is in the scope."""
    for _ in range(3):
        out, st = await run_to_end(tracker, JobSpec(argv=("cat", "/proc/self/cgroup")))
        assert out == b"0::/\n", out
        assert st.state is JobState.TERMINATED
    status = await tracker.start("alex", JobSpec(argv=("sleep", "600")))
    scope = scope_dir("alex", status.job_id)
    job = tracker._jobs[status.job_id]
    assert job.running is not None
    processes = job.running.processes
    named = {processes.supervisor_pid, processes.command_pid, processes.copier_pid}
    assert None not in named
    assert named <= tree_pids(scope)
    await tracker.stop("alex", status.job_id)
    await eventually(lambda: not scope.exists(), timeout=scaled(10), what="the scope goes")


async def test_a_scope_an_operator_stops_is_a_job_stopped_outside_jobworker(
    tracker: JobTracker,
) -> None:
    """`systemctl stop <scope>` ends the job as stopped, saying that it was stopped
    outside jobworker (not killed by a signal, not lost); a job jobworker stops says
    nothing of the kind."""
    status = await tracker.start("alex", JobSpec(argv=("sleep", "600")))
    unit = scope_dir("alex", status.job_id).name
    subprocess.run(["systemctl", "stop", unit], check=True, timeout=scaled(30))
    with trio.fail_after(scaled(30)):
        ended = await tracker.wait("alex", status.job_id)
    assert (ended.state, ended.outcome) == (JobState.TERMINATED, Outcome.STOPPED), ended
    assert ended.outcome_reason == f"stopped outside jobworker: systemd stopped its scope {unit}"
    ours = await tracker.start("alex", JobSpec(argv=("sleep", "600")))
    stopped = await tracker.stop("alex", ours.job_id)
    assert (stopped.outcome, stopped.outcome_reason) == (Outcome.STOPPED, None), stopped


async def test_starts_go_on_after_systemd_re_executes_itself(tracker: JobTracker) -> None:
    """`systemctl daemon-reexec` (systemd's own upgrade) leaves jwsd's one bus
    connection working: the next start still gets its job's JobRemoved in time."""
    assert (await run_to_end(tracker, JobSpec(argv=("echo", "before"))))[0] == b"before\n"
    subprocess.run(["systemctl", "daemon-reexec"], check=True, timeout=scaled(60))
    with trio.fail_after(scaled(10)):
        assert (await run_to_end(tracker, JobSpec(argv=("echo", "after"))))[0] == b"after\n"


async def _run_one(client: JobWorkerClient, text: str) -> bytes:
    job = await client.start(args=["echo", text])
    out = bytearray()
    async with contextlib.aclosing(client.output(job.job_id, 0)) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


async def test_one_connection_starts_fifty_jobs_in_turn_and_twenty_at_once(
    tmp_path: Path, pki: TestPKI
) -> None:
    """jwsd on the systemd driver serves every start of a client's one connection (it
    closed that connection after 12 starts once): 50 in turn, then 20 at once, each
    job's output whole; and it holds no more fds or tasks after them than before."""
    require_systemd()
    files = DaemonFiles.write(tmp_path, pki)
    async with files.serving(cgroup_driver="systemd") as daemon, daemon.connect("alex") as client:
        assert await _run_one(client, "first") == b"first\n"  # the bus is connected
        async with LeakCheck(processes=False):
            with trio.fail_after(scaled(120)):
                for i in range(50):
                    assert await _run_one(client, f"turn {i}") == f"turn {i}\n".encode()
                outs: dict[int, bytes] = {}

                async def one(i: int) -> None:
                    outs[i] = await _run_one(client, f"at once {i}")

                async with trio.open_nursery() as nursery:
                    for i in range(20):
                        nursery.start_soon(one, i)
                assert outs == {i: f"at once {i}\n".encode() for i in range(20)}
    await eventually(
        lambda: not list(SLICE_DIR.glob("jobworker-alex.slice/*.scope")),
        timeout=scaled(10),
        what="every job's scope goes",
    )


# ---- a bus that never answers ---------------------------------------------------------


class SilentBus:
    """A D-Bus peer of the test's own on a private socket: it authenticates a client,
    answers Hello, AddMatch, Subscribe and ListUnitsByPatterns (no units), and never
    answers anything else (StartTransientUnit, StopUnit): a systemd that hangs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unanswered: list[str] = []
        self.connections = 0
        self._streams: list[trio.SocketStream] = []
        self._ready = threading.Event()
        self._cancel = trio.CancelScope()
        # A thread of its own: jwsd's start-up asks the bus with blocking calls.
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)

    def __enter__(self) -> SilentBus:
        self._thread.start()
        self._ready.wait(10)
        return self

    def hang_up(self) -> None:
        """Close every client's connection, as a restarted dbus-daemon would."""

        def close() -> None:
            for stream in self._streams:
                stream.socket.close()

        self._token.run_sync_soon(close)

    def __exit__(self, *_: object) -> None:
        self._token.run_sync_soon(self._cancel.cancel)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with self._cancel:
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await sock.bind(str(self.path))
            sock.listen()
            async with trio.SocketListener(sock) as listener, trio.open_nursery() as nursery:
                self._ready.set()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._client, stream)

    async def _client(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._streams.append(stream)
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._converse(stream)

    async def _converse(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while b"BEGIN\r\n" not in buffer:
                data = await stream.receive_some()
                if not data:
                    return
                buffer += data
                if b"AUTH" in buffer and b"OK" not in buffer:
                    await stream.send_all(b"OK " + b"0" * 32 + b"\r\n")
                    buffer += b"OK"
                if buffer.endswith(b"NEGOTIATE_UNIX_FD\r\n"):
                    await stream.send_all(b"AGREE_UNIX_FD\r\n")
            parser = Parser()
            parser.add_data(buffer.split(b"BEGIN\r\n", 1)[1])
            while True:
                for message in iter(parser.get_next_message, None):
                    await self._answer(stream, message)
                data = await stream.receive_some()
                if not data:
                    return
                parser.add_data(data)

    async def _answer(self, stream: trio.SocketStream, message: object) -> None:
        header = message.header  # type: ignore[attr-defined]
        if header.message_type is not MessageType.method_call:
            return
        member = header.fields.get(HeaderFields.member)
        if member == "Hello":
            reply = new_method_return(message, "s", (":1.1",))
        elif member in {"AddMatch", "Subscribe", "ResetFailedUnit"}:
            reply = new_method_return(message)
        elif member == "ListUnitsByPatterns":
            reply = new_method_return(message, "a(ssssssouso)", ([],))
        else:
            self.unanswered.append(member)
            return
        await stream.send_all(reply.serialise(serial=1_000_000 + header.serial))


# The bus is the test's own and the start fails before any cgroup: the host runs it.
@pytest.mark.hierarchy_independent
async def test_a_bus_that_never_answers_fails_the_start_in_bounded_time_leaving_nothing(
    tmp_path: Path,
) -> None:
    require_root()
    bus = SilentBus(tmp_path / "bus")
    bound = scaled(1.0)
    driver = SystemdDriver(bus=f"unix:path={bus.path}", bus_timeout=bound)
    with bus:
        config = TrackerConfig(data_dir=tmp_path / "data", network_default="none")
        async with JobTracker(config, cgroups=driver) as tracker:
            with pytest.raises(StartFailedError):  # the first start connects
                await tracker.start("alex", JobSpec(argv=("sleep", "600")))
            connections = bus.connections  # start-up's own (blocking) ones, and jwsd's
            async with LeakCheck():
                started = time.monotonic()
                with pytest.raises(
                    StartFailedError, match=r"systemd did not create the job's scope within"
                ):
                    await tracker.start("alex", JobSpec(argv=("sleep", "600")))
                took = time.monotonic() - started
            # The start's wait, then the clean-up's StopUnit: each bounded.
            assert took < 2 * bound + scaled(3), took
            assert bus.unanswered.count("StartTransientUnit") == 2
            assert bus.connections == connections, "every start and stop on one connection"
            assert not any((tmp_path / "data" / "jobs").iterdir())
            # The bus hangs up (dbus-daemon restarted): the next start reaches it again.
            bus.hang_up()
            await eventually(
                lambda: bus._streams[-1].socket.fileno() == -1, timeout=5, what="the hang-up"
            )
            with pytest.raises(StartFailedError, match=r"within"):
                await tracker.start("alex", JobSpec(argv=("sleep", "600")))
            assert bus.connections == connections + 1
            assert bus.unanswered.count("StartTransientUnit") == 3
