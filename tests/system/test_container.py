"""docker/Dockerfile built and run with podman the way docker/compose.yaml runs it
(privileged, the host's cgroup namespace, an init, the two volumes, 20 s to stop):
jwsd starts and is healthy, `jws` works from inside the container and from the host
with the copied client certificates, a job's limits hold, and `podman stop` stops every
job and jwsd exits 0.

JOBWORKER_BASE_IMAGE: the base image (default the one users pull); JOBWORKER_WHEELS: a
wheelhouse directory mounted at /wheels for the build (where no index is reachable).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from jobworker.sandbox.bwrap import HELPER_PROCESSES
from tests.support.timing import scaled
from tests.system.conftest import BIN, ROOT, processes_with, require_podman, run

# Under CPU emulation an image build alone takes minutes: past the suite-wide 300 s.
pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]

IMAGE = "localhost/jobworker:systemtest"
PORT = 50051  # the image's; host networking makes it the machine's


@attrs.define
class Container:
    name: str
    volumes: tuple[str, str]
    host_tls: Path

    def exec(self, *argv: str, check: bool = True) -> str:
        return run(["podman", "exec", self.name, *argv], check=check, timeout=180).stdout

    def inspect(self, template: str) -> str:
        return run(["podman", "inspect", "-f", template, self.name]).stdout.strip()

    def subtree(self) -> Path:
        """The container's cgroup, which jwsd divides (PID 1, the init, sits in <it>/init)."""
        pid = self.inspect("{{.State.Pid}}")
        path = Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[1]
        cgroup = Path("/sys/fs/cgroup") / path.lstrip("/")
        return cgroup.parent if cgroup.name in ("init", "jwsd") else cgroup


@pytest.fixture(scope="module")
def image() -> str:
    require_podman()
    base = os.environ.get("JOBWORKER_BASE_IMAGE", "python:3.11-slim-bookworm")
    argv = ["podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}"]
    wheels = os.environ.get("JOBWORKER_WHEELS")
    if wheels:
        argv += ["--pull=never", "--network=none", "-v", f"{wheels}:/wheels:ro"]
    run([*argv, "-f", "docker/Dockerfile", "-t", IMAGE, "."], cwd=ROOT, timeout=1800)
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The container as compose.yaml says, running and healthy: podman's `healthcheck run`
    of the image's own HEALTHCHECK command passes.

    The command is given again with `--health-cmd`, exactly as the image has it, only to
    stretch its timeout: the image's 10 s for one `jws health` (a Python start-up) is for
    real CPUs, and podman (4.3, and later ones: podman issues #20212, #21476) ignores
    `--health-timeout` and the other health options unless `--health-cmd` comes with them,
    keeping the image's 10 s, which an emulated CPU often needs more than.
    """
    name = f"jwsd-systemtest-{uuid.uuid4().hex[:8]}"
    volumes = (f"{name}-certs", f"{name}-data")
    check = run(["podman", "image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", image])
    test = json.loads(check.stdout)
    assert test[0] == "CMD-SHELL" and "jws health" in test[1], test
    timeout = f"{scaled(10):.0f}s"
    run(
        ["podman", "run", "-d", "--name", name,
         "--privileged", "--cgroupns=host", "--init", "--network=host", "--stop-timeout", "20",
         "--health-cmd", json.dumps(test), "--health-timeout", timeout,
         "-e", "JOBWORKER_USERS=alex betty admin",
         "-v", f"{volumes[0]}:/certs", "-v", f"{volumes[1]}:/var/lib/jobworker", image,
         # The VM has no default route, which the outbound default's pasta needs;
         # the network is not what this test is about (tests/*/test_network.py).
         "--network-default", "none"],
    )  # fmt: skip
    box = Container(name, volumes, tmp_path_factory.mktemp("host") / "certs")
    try:
        configured = json.loads(box.inspect("{{json .Config.Healthcheck}}"))
        assert configured["Test"] == test, configured  # the image's command, unchanged
        assert configured["Timeout"] == int(timeout[:-1]) * 10**9, configured  # and our timeout
        started = time.monotonic()
        deadline = started + scaled(60)
        attempts = 1
        while run(["podman", "healthcheck", "run", name], check=False).returncode != 0:
            assert box.inspect("{{.State.Running}}") == "true", _logs(name)
            assert time.monotonic() < deadline, _never_healthy(name)
            time.sleep(2)
            attempts += 1
        print(f"healthy after {attempts} checks, {time.monotonic() - started:.0f} s")
        run(["podman", "cp", f"{name}:/certs", str(box.host_tls)])
        yield box
    finally:
        print(_logs(name))
        run(["podman", "rm", "-f", "-t", "0", name], check=False)
        run(["podman", "volume", "rm", *volumes], check=False)


def _never_healthy(name: str) -> str:
    """Why the container never became healthy: podman's record of the last checks (exit
    code, output), and the same check run by hand."""
    state = run(["podman", "inspect", "-f", "{{json .State}}", name], check=False).stdout
    started = time.monotonic()
    probe = run(
        ["podman", "exec", name, "sh", "-c",
         'jws health -u "${JOBWORKER_USERS%% *}" --addr 127.0.0.1:50051'],
        check=False, timeout=300,
    )  # fmt: skip
    return (
        f"never healthy; podman's state: {state}\nthe check by hand exited {probe.returncode} "
        f"after {time.monotonic() - started:.1f} s: "
        f"{probe.stdout!r} {probe.stderr!r}\n{_logs(name)}"
    )


def _logs(name: str) -> str:
    result = run(["podman", "logs", name], check=False)
    return result.stdout + result.stderr


def host_jws(box: Container, *args: str, check: bool = True) -> str:
    argv = [str(BIN / "jws"), args[0], "-u", "alex", "--addr", f"127.0.0.1:{PORT}"]
    return run([*argv, "--tls-dir", str(box.host_tls), *args[1:]], check=check).stdout


def test_jws_inside_the_container_runs_the_readme_example(container: Container) -> None:
    assert "listening on 0.0.0.0:50051" in _logs(container.name)
    example = "sh -c 'for i in 1 2 3; do echo tick $i; sleep 0.2; done'"
    job_id = container.exec("jws", "start", "-u", "alex", "-c", example).strip()
    output = container.exec("jws", "output", "-u", "alex", "-j", job_id)
    assert output == "tick 1\ntick 2\ntick 3\n"
    status = container.exec("jws", "status", "-u", "alex", "-j", job_id)
    assert status.startswith("Terminated (exit code 0)"), status


def test_jws_on_the_host_with_the_copied_certificates(container: Container) -> None:
    assert host_jws(container, "health").strip() == "SERVING"
    job_id = host_jws(container, "start", "-c", "sh -c 'echo from the host'").strip()
    assert host_jws(container, "output", "-j", job_id) == "from the host\n"
    assert host_jws(container, "status", "-j", job_id).startswith("Terminated")
    # The container's jws sees the same job: one jwsd.
    assert container.exec("jws", "status", "-u", "alex", "-j", job_id).startswith("Terminated")


def test_a_job_is_held_to_its_memory_limit(container: Container) -> None:
    job_id = container.exec(
        "jws", "start", "-u", "alex", "--memory", "64M", "--pids", "20", "-c", "sleep 600"
    ).strip()
    # Each user's jobs are in a group of that user's (jobworker/user-alex/<id>).
    job_cgroup = container.subtree() / "jobworker" / "user-alex" / job_id
    assert (job_cgroup / "memory.max").read_text() == f"{64 << 20}\n"
    # jwsd adds bubblewrap's own processes to the job's pids limit.
    assert (job_cgroup / "pids.max").read_text() == f"{20 + HELPER_PROCESSES}\n"
    host_jws(container, "stop", "-j", job_id)
    hog = run(
        ["podman", "exec", container.name, "jws", "run", "-u", "alex", "--memory", "64M",
         "--", "python3", "-c", "bytearray(200 << 20)"],
        check=False, timeout=180,
    )  # fmt: skip
    assert hog.returncode == 137 and "OOM" in hog.stderr, hog


def test_podman_stop_stops_every_job_and_jwsd_exits_0(container: Container) -> None:
    marker = f"33{uuid.uuid4().int % 10**6:06d}"
    host_jws(container, "start", "-c", f"sleep {marker}")
    container.exec(
        "jws", "start", "-u", "alex", "-c", f"sh -c 'trap \"\" TERM; sleep {marker}; true'"
    )
    # Both jobs run (the second one's shell and bubblewrap show the marker too).
    assert len(processes_with(f"sleep {marker}")) >= 3
    jobs = container.subtree() / "jobworker"
    assert jobs.is_dir()
    run(["podman", "stop", container.name], timeout=120)
    assert container.inspect("{{.State.ExitCode}}") == "0", _logs(container.name)
    assert processes_with(f"sleep {marker}") == []
    assert not jobs.exists()
    assert "stopped" in _logs(container.name)
