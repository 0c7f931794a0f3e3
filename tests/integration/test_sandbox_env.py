"""The tracker's sandbox on the real kernel: the job's environment exactly as asked over the defaults
(of any size the kernel can exec, a clear refusal past it), tmpfs sizes bounded by
the memory limit, and defaults that give way to the operator's maximum.
"""

from __future__ import annotations

import resource
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.errors import InvalidRequestError
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, Limits
from jobworker.sandbox import bwrap, program
from tests.support.tracking import run_to_end, running_tracker

pytestmark = pytest.mark.root


# The variables every job gets unless its request sets them (as `docker run -e`).
DEFAULT_NAMES = {"PATH", "HOME", "LANG", "USER", "LOGNAME"}


async def test_the_job_gets_exactly_its_environment_over_the_defaults(
    tracker: JobTracker,
) -> None:
    """Whatever the values hold (spaces, newlines, '=', nothing), over the default
    environment, and no variable of the daemon's or the helpers' own, but the PWD
    its shell exports."""
    env = {
        "PATH": "/usr/bin:/bin",
        "SPACED": "a b  c",
        "LINES": "one\ntwo",
        "EQ": "k=v=w",
        "EMPTY": "",
        "LD_PRELOAD": "",
    }
    spec = JobSpec(argv=("sh", "-c", "cat /proc/$$/environ"), env=env)
    out, status = await run_to_end(tracker, spec)
    assert status.exit_code == 0, out
    seen = dict(item.split("=", 1) for item in out.decode().rstrip("\0").split("\0"))
    assert seen.pop("PWD") == str(tracker.config.data_dir / "jobs" / status.job_id / "work")
    assert {name: seen.pop(name) for name in env} == env
    assert set(seen) == DEFAULT_NAMES - set(env)
    assert seen["HOME"] == str(tracker.config.data_dir / "jobs" / status.job_id / "work")


@pytest.fixture
def small_stack() -> Iterator[int]:
    """A 1 MiB stack limit for the daemon (this process) and so its jobs: the kernel
    then execs at most 256 KiB of strings, below what a request may carry (1 MiB).
    Yields that room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, hard))
    try:
        yield program.exec_space()
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))


def _env_filling(room: int) -> dict[str, str]:
    """PATH and V000.. variables whose exec strings and pointers take about `room` bytes."""
    value_size = (64 << 10) - 16
    env = {"PATH": "/usr/bin:/bin"}
    used = len("PATH=/usr/bin:/bin") + 1 + 8
    i = 0
    while used < room:
        key = f"V{i:03d}"
        size = min(value_size, room - used - len(key) - 2 - 8)
        if size < 0:
            break
        env[key] = str(i % 10) * size
        used += len(key) + 2 + size + 8
        i += 1
    return env


async def test_an_environment_as_large_as_the_kernel_execs_works(
    tracker: JobTracker, small_stack: int
) -> None:
    """Up to the kernel's room for exec's strings (less the slack kept for what the
    shell adds), in values of 64 KiB: the job sees every byte."""
    argv = ("sh", "-c", "env | grep '^V' | wc -c")
    prefix = sum(
        len(a) + 1 + 8
        for a in [shutil.which("sh") or "", "-c", bwrap.READY_HELPER, "jobworker-exec", *argv]
    )
    # The defaults the request's variables are added to (HOME is the work dir's path).
    home = len(
        str(tracker.config.data_dir / "jobs" / "a-uuid-of-36-characters-------------" / "work")
    )
    defaults = (
        len("HOME=") + home + sum(len(x) for x in ("LANG=C.UTF-8", "USER=nobody", "LOGNAME=nobody"))
    )
    prefix += defaults + 4 * (1 + 8)
    env = _env_filling(small_stack - program.ARG_SPACE_SLACK - prefix)
    assert len(env) > 3
    out, status = await run_to_end(tracker, JobSpec(argv=argv, env=env))
    assert status.exit_code == 0, out
    assert int(out) == sum(len(k) + 1 + len(v) + 1 for k, v in env.items() if k.startswith("V"))


async def test_an_environment_past_the_kernel_limit_is_an_invalid_request(
    tracker: JobTracker, small_stack: int
) -> None:
    """A request the model accepts (under 1 MiB) that this host's kernel would not
    exec: refused before anything is created, saying what to do, not an internal
    error from E2BIG."""
    env = _env_filling(small_stack + 1)
    with pytest.raises(InvalidRequestError, match="pass large data in a file"):
        await tracker.start("alex", JobSpec(argv=("true",), env=env))
    with pytest.raises(InvalidRequestError, match="pass large data in a file"):
        await tracker.start("alex", JobSpec(argv=("echo", *(["x" * 60_000] * 5))))
    assert tracker.list("alex") == []


async def test_tmpfs_is_the_configured_size_at_most_the_memory_limit(tmp_path: Path) -> None:
    script = "df -B1 --output=size /tmp /dev/shm | tail -n +2"
    async with running_tracker(
        tmp_path / "data", check_records=False, tmpfs_size=16 << 20
    ) as tracker:
        out, _ = await run_to_end(tracker, JobSpec(argv=("sh", "-c", script)))
        assert [int(size) for size in out.split()] == [16 << 20, 16 << 20]
        limited = JobSpec(argv=("sh", "-c", script), limits=Limits(memory=12 << 20))
        out, _ = await run_to_end(tracker, limited)
        assert [int(size) for size in out.split()] == [12 << 20, 12 << 20]


async def test_a_default_above_the_maximum_gives_way_to_it(tmp_path: Path) -> None:
    """An operator's --max-limits below a default must not refuse every job that asks
    for nothing; only what a request asks for itself is refused as too much."""
    async with running_tracker(
        tmp_path / "data",
        check_records=False,
        default_limits=Limits(memory=512 << 20, pids=256),
        max_limits=Limits(memory=128 << 20, pids=1000),
    ) as tracker:
        status = await tracker.start("alex", JobSpec(argv=("true",)))
        assert status.spec.limits.memory == 128 << 20
        assert status.spec.limits.pids == 256
        with pytest.raises(InvalidRequestError, match="above this server's maximum"):
            await tracker.start("alex", JobSpec(argv=("true",), limits=Limits(memory=256 << 20)))
