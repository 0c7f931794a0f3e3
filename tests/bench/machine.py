"""The machine the benchmarks run on: its facts, the Debian packages the peers need,
and memory figures of processes and cgroups read from /proc and cgroupfs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Programs the peers need, and the Debian package that provides each.
PEER_PROGRAMS = {
    "runc": "runc",
    "busybox": "busybox-static",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}

#: Where sshd looks for programs that are not on a normal user's PATH.
_SBIN = ("/usr/sbin", "/sbin")


def which(program: str) -> str | None:
    """The absolute path of `program` on PATH or in the sbin dirs; None when missing."""
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(_SBIN))


def ensure_peer_programs(say: list[str]) -> list[str]:
    """Install the Debian packages of missing peer programs with apt-get (root only).

    say: gets one line per action taken, for the report.
    Returns the programs still missing afterwards (their rows are then left out)."""
    missing = {program: package for program, package in PEER_PROGRAMS.items() if not which(program)}
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted(set(missing.values()))
        say.append(f"installed with apt-get: {' '.join(packages)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        install = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            capture_output=True,
        )
        if update.returncode or install.returncode:
            say.append("apt-get failed: " + install.stderr.decode(errors="replace")[-300:])
    return [program for program in PEER_PROGRAMS if not which(program)]


def facts(quick: bool) -> dict[str, str]:
    """Cores, CPU model, memory, kernel, cgroup version, Python and package versions."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    mem_total = next(
        int(line.split()[1]) // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cgroup = (
        "v2 (unified)"
        if Path("/sys/fs/cgroup/cgroup.controllers").exists()
        else "v1 (one hierarchy per controller)"
    )
    packages = ", ".join(
        f"{name} {_version(name)}" for name in ("trio", "purerpc", "h2", "protobuf", "grpcio")
    )
    tools = ", ".join(
        f"{name} {_tool_version(argv)}"
        for name, argv in (
            ("bwrap", ["bwrap", "--version"]),
            ("runc", ["runc", "--version"]),
            ("OpenSSH", ["ssh", "-V"]),
        )
    )
    return {
        "mode": "quick (small sizes)" if quick else "full",
        "cores": f"{os.cpu_count()} ({cpu_model})",
        "memory": f"{mem_total:,} MiB",
        "kernel": platform.release(),
        "cgroups": cgroup,
        "python": sys.version.split()[0],
        "packages": packages,
        "tools": tools,
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _tool_version(argv: list[str]) -> str:
    path = which(argv[0])
    if path is None:
        return "missing"
    done = subprocess.run([path, *argv[1:]], capture_output=True, text=True)
    words = (done.stdout or done.stderr).split()
    # "bubblewrap 0.8.0", "runc version 1.1.5+ds1", "OpenSSH_9.2p1 Debian-2, ..."
    if argv[0] == "ssh":
        return words[0].removeprefix("OpenSSH_").rstrip(",") if words else "?"
    return words[2] if argv[0] == "runc" and len(words) > 2 else words[1] if len(words) > 1 else "?"


def status_kib(pid: int, field: str) -> int:
    """A size field of /proc/PID/status ("VmRSS", "VmHWM"), in KiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    """The proportional set size of a process (shared pages split between their users), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def memory_cgroup_of(pid: int) -> Path:
    """The v1 memory cgroup directory of a process (for jwsd: the parent of its job cgroups)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    raise RuntimeError(f"process {pid} has no v1 memory cgroup; this benchmark reads cgroup v1")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, every thread; 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Samples a process's CPU time every `interval` seconds in a thread, so that the CPU
    it used between two wall-clock times (e.g. a row's first and last byte) can be read
    afterwards. Use it as a context manager."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), cpu_seconds(self.pid)))
            if self._stop.wait(self.interval):
                self.samples.append((time.time(), cpu_seconds(self.pid)))
                return

    def cores_between(self, start: float, end: float) -> float:
        """CPU seconds used from `start` to `end` (wall-clock), per second of that span."""
        inside = [cpu for at, cpu in self.samples if start <= at <= end]
        if len(inside) < 2 or end <= start:
            return 0.0
        return (inside[-1] - inside[0]) / (end - start)
