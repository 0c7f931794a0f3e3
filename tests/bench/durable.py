"""What the `durable` group of `just bench` needs (issue 11): a real jwsd that can be
SIGKILLed and started again on its data dir, timed from its exec to serving; the
processes that hold each running job outside jwsd, by job; and what a run left.

The group itself (`Bench.durable` in tests/bench/run.py) measures, with real jwsd
processes and the real client:

take over  N running `sleep` jobs, jwsd SIGKILLed, a new jwsd started on the same
           data dir: the time from its exec to its "listening" line (jwsd logs it once
           every record is reconciled and every running job taken over), next to the
           same restart of a jwsd with no jobs; every job checked Active after each.
PSS        per running job, bubblewrap's two processes and the output copier (`cat`):
           what holds a job outside jwsd.
replay     a finished job's whole output from byte 0 after a restart (GetJobOutput,
           the Python client), next to the same client following a job live.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import attrs

from tests.bench.machine import pss_kib
from tests.e2e.conftest import Jwsd, restart_jwsd, start_jwsd
from tests.support.certs import TestPKI

#: jwsd's flags in the benchmarks: no running quota (the load and durable rows run
#: 1,000 jobs of one user), no output cap (the floods and the 1 GiB replay), no
#: connection cap (the RPC row's 50 clients are one user).
JWSD_FLAGS = (
    "--max-running-per-user", "0", "--max-output", "0", "--max-connections-per-user", "0",
)  # fmt: skip

_LISTENING = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO .*listening on ", re.M)


@attrs.define(eq=False)
class RestartableJwsd:
    """A real jwsd on its own directory (data dir, certificates, log) that can be
    SIGKILLed and started again on it, keeping its cgroup name."""

    directory: Path
    pki: TestPKI
    daemon: Jwsd | None = None

    @property
    def jwsd(self) -> Jwsd:
        if self.daemon is None:
            raise RuntimeError("jwsd is not running")
        return self.daemon

    def start(self) -> float:
        """Start jwsd, or start it again on the same data dir after `kill`.

        Returns the seconds from just before its exec to the timestamp of its
        "listening" line: jwsd serves from then on, with every record reconciled and
        every running job taken over. Raises what `start_jwsd` raises when it does
        not come up."""
        log_path = self.directory / "jwsd.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        began = time.time()
        if self.daemon is None:
            self.daemon = start_jwsd(self.directory, self.pki, *JWSD_FLAGS)
        else:
            self.daemon = restart_jwsd(self.daemon, self.pki, *JWSD_FLAGS)
        text = log_path.read_bytes()[offset:].decode(errors="replace")
        match = _LISTENING.search(text)
        if match is None:  # another log format: the caller's clock (10 ms polling)
            return time.time() - began
        # logging's asctime: local time, milliseconds after the comma
        listening = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return listening - began

    def kill(self) -> None:
        """SIGKILL jwsd (its jobs keep running) and reap it."""
        process = self.jwsd.process
        process.kill()
        process.wait()

    def close(self) -> list[str]:
        """Stop jwsd with SIGTERM (it stops every job it runs), then kill and remove
        whatever of its jobs is left (`leftovers`). Returns what was left, one line
        each: empty when jwsd cleaned up after itself."""
        if self.daemon is None:
            return []
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.daemon.stop(timeout=120)
        return leftovers(self.daemon)


@attrs.define
class JobProcesses:
    """The processes of one running job, as found in /proc."""

    bwrap: list[int] = attrs.Factory(list)  # bubblewrap (outside and the sandbox's init)
    command: list[int] = attrs.Factory(list)  # the rest of the job's cgroup
    copier: list[int] = attrs.Factory(list)  # `cat` writing the job's output file

    def pss_kib(self, *, command: bool = False) -> int:
        """The PSS sum of bubblewrap's processes and the copier (and the command's)."""
        pids = self.bwrap + self.copier + (self.command if command else [])
        return sum(pss_kib(pid) for pid in pids)


def job_processes(daemon: Jwsd) -> dict[str, JobProcesses]:
    """Every process of `daemon`'s jobs by job id: those in the job's cgroup (found
    by the cgroup name in /proc/PID/cgroup, v1 or v2) and its copier (the process
    whose stdout is the job's output file)."""
    jobs: dict[str, JobProcesses] = {}
    outputs = str(daemon.data_dir / "jobs") + "/"
    for pid in _pids():
        try:
            job_id = _job_of_cgroup(Path(f"/proc/{pid}/cgroup").read_text(), daemon.cgroup_name)
            if job_id is not None:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                found = jobs.setdefault(job_id, JobProcesses())
                (found.bwrap if comm == "bwrap" else found.command).append(pid)
                continue
            stdout = os.readlink(f"/proc/{pid}/fd/1")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if stdout.startswith(outputs) and stdout.endswith("/output.log"):
            job_id = stdout[len(outputs) :].split("/", 1)[0]
            jobs.setdefault(job_id, JobProcesses()).copier.append(pid)
    return jobs


def leftovers(daemon: Jwsd) -> list[str]:
    """What `daemon`'s jobs left after it exited: processes (of a job's cgroup, or a
    copier) and job cgroups. Kills and removes them; returns one line for each kind
    found (empty when nothing was left)."""
    found = []
    processes = job_processes(daemon)
    pids = [pid for job in processes.values() for pid in job.bwrap + job.command + job.copier]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        found.append(f"{len(pids)} processes of {len(processes)} jobs were left (killed)")
    cgroups = remove_cgroups(daemon.cgroup_name)
    if cgroups:
        found.append(f"{len(cgroups)} cgroup dirs were left (removed), e.g. {cgroups[0]}")
    return found


def remove_cgroups(name: str) -> list[Path]:
    """Remove the cgroup dirs named `name` (jwsd's job parent) in every hierarchy
    and every dir under them, deepest first (processes still in one keep it). Returns
    the dirs that were there: jwsd removes them itself, so any means it crashed."""
    removed: list[Path] = []
    for parent in Path("/sys/fs/cgroup").glob(f"*/**/{name}"):
        if not parent.is_dir():
            continue
        for path in sorted(parent.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            removed.append(path)
            with contextlib.suppress(OSError):
                path.rmdir()
    return removed


def _pids() -> Iterable[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def _job_of_cgroup(text: str, name: str) -> str | None:
    """The job id in a /proc/PID/cgroup text when the process is in one of jwsd's job
    cgroups (".../NAME/[user-OWNER/]JOB_ID"), else None."""
    for line in text.splitlines():
        parts = line.split(":", 2)[-1].split("/")
        if name in parts:
            below = [p for p in parts[parts.index(name) + 1 :] if p and not p.startswith("user-")]
            if below:
                return below[0]
    return None
