"""What people would use instead of jobworker, run on the same machine in the same run:

- start: plain fork+exec of `true` (the floor), jobworker's own setpriv + bwrap
  command line around `true` without the daemon, and `runc run` of a busybox
  bundle with the same limits (cpu, memory, pids);
- output: a raw pipe (the floor) and OpenSSH on loopback, against its own sshd.

Everything here cleans up what it made: temp dirs, bundles, runc state, sshd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs

from jobworker.jobs.config import DEFAULT_WORKDIR_SIZE
from jobworker.sandbox import bwrap, hostview
from tests.bench.machine import which

#: Limits every start benchmark applies (jobworker's request and runc's config alike).
CPU_CORES = 1.0
MEMORY_BYTES = 256 << 20
PIDS = 64


def time_runs(argv: list[str], count: int, **kwargs: object) -> list[float]:
    """Run `argv` to completion `count` times; each run's wall time in ms.
    Raises RuntimeError when a run fails (a fast failure must not pass as a fast start)."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        done = subprocess.run(argv, capture_output=True, **kwargs)  # type: ignore[call-overload]
        samples.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"
            )
    return samples


def fork_exec_true(count: int) -> list[float]:
    """The floor: fork+exec of /bin/true and wait, in ms."""
    return time_runs(["/bin/true"], count)


def bwrap_true(count: int, data_dir: Path) -> list[float]:
    """jobworker's own sandbox command line (trampoline with no cgroup, setpriv to
    nobody, bwrap with the same flags) around /bin/true, without the daemon; ms."""
    tools = bwrap.SandboxTools(
        sh=shutil.which("sh") or "/bin/sh",
        setpriv=shutil.which("setpriv") or "/usr/bin/setpriv",
        bwrap=shutil.which("bwrap") or "/usr/bin/bwrap",
    )
    user = bwrap.JobUser.lookup("nobody")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o711)  # the job user must reach its work dir, as under jwsd's data dir
    workdir = data_dir / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    os.chown(workdir, user.uid, user.gid)
    read_end, write_end = os.pipe()
    args_fd = os.memfd_create("jwbench-args")
    try:
        argv = bwrap.spawn_argv(
            tools,
            user,
            procs_files=[],
            data_dir=data_dir,
            workdir=workdir,
            cwd=str(workdir),
            argv=["/bin/true"],
            status_fd=write_end,
            args_fd=args_fd,
            host_network=False,
            tmpfs_size=64 << 20,
            workdir_size=DEFAULT_WORKDIR_SIZE,
            view=hostview.HostView.build(
                can_read=hostview.readable_by(user), data_dir=data_dir
            ).options,
        )
        os.write(args_fd, bwrap.env_options({"PATH": "/usr/bin:/bin"}))
        os.set_blocking(read_end, False)
        samples = []
        for _ in range(count):
            os.lseek(args_fd, 0, os.SEEK_SET)  # bubblewrap reads its options to the end
            # The ready helper's socket, with the daemon's answer already in it.
            ours, theirs = socket.socketpair()
            with ours, theirs:
                ours.send(b"\n")
                samples += time_runs(
                    argv,
                    1,
                    stdin=theirs.fileno(),
                    pass_fds=(write_end, args_fd),
                    env=dict(bwrap.HELPER_ENV),
                )
            with contextlib.suppress(BlockingIOError):  # drop the JSON status lines
                os.read(read_end, 1 << 16)
        return samples
    finally:
        os.close(read_end)
        os.close(write_end)
        os.close(args_fd)


@contextlib.contextmanager
def runc_bundle() -> Iterator[tuple[Path, Path]]:
    """A runc bundle running busybox `true` with the benchmark's limits, and a private
    runc state dir; both removed on exit. Yields (bundle dir, state dir)."""
    runc, busybox = which("runc"), which("busybox")
    if runc is None or busybox is None:
        raise RuntimeError("runc and busybox are needed: apt-get install runc busybox-static")
    with tempfile.TemporaryDirectory(prefix="jwbench-runc-") as tmp:
        bundle, state = Path(tmp) / "bundle", Path(tmp) / "state"
        (bundle / "rootfs" / "bin").mkdir(parents=True)
        state.mkdir()
        shutil.copy(busybox, bundle / "rootfs" / "bin" / "busybox")
        (bundle / "rootfs" / "bin" / "true").symlink_to("busybox")
        subprocess.run([runc, "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/true"]
        config["linux"]["resources"] = {
            **config["linux"].get("resources", {}),
            "memory": {"limit": MEMORY_BYTES, "swap": MEMORY_BYTES},
            "cpu": {"quota": int(CPU_CORES * 100_000), "period": 100_000},
            "pids": {"limit": PIDS},
        }
        (bundle / "config.json").write_text(json.dumps(config))
        yield bundle, state


def runc_true(count: int) -> list[float]:
    """`runc run` of the busybox bundle, to completion, in ms (a fresh container id each)."""
    runc = which("runc")
    assert runc is not None
    with runc_bundle() as (bundle, state):
        samples = []
        for _ in range(count):
            name = f"jwbench-{uuid.uuid4().hex[:12]}"
            try:
                samples += time_runs(
                    [runc, "--root", str(state), "run", "--bundle", str(bundle), name], 1
                )
            finally:
                # A failed run can leave its container's state behind.
                subprocess.run(
                    [runc, "--root", str(state), "delete", "--force", name], capture_output=True
                )
        return samples


def sink_argv(size: int) -> list[str]:
    return [sys.executable, "-m", "tests.bench.sink", str(size)]


def timed_pipeline(producer: list[str], size: int, **kwargs: object) -> float:
    """Run `producer | sink`, check the sink got exactly `size` zero bytes; MiB/s from
    the producer's launch to the sink's EOF (the sink is started first and is
    waiting, so only the producer's start-up and transfer are timed).
    Raises RuntimeError on a wrong count or content, or a failed producer."""
    read_end, write_end = os.pipe()
    with subprocess.Popen(sink_argv(size), stdin=read_end, stdout=subprocess.PIPE) as sink:
        os.close(read_end)
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != b"ready":
            os.close(write_end)
            raise RuntimeError("the sink did not start")
        started = time.perf_counter()
        try:
            source = subprocess.Popen(  # type: ignore[call-overload]
                producer,
                stdout=write_end,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                **kwargs,
            )
        finally:
            os.close(write_end)
        line = sink.stdout.readline()
        elapsed = time.perf_counter() - started
        _, errors = source.communicate()
    result = json.loads(line)
    if source.returncode != 0 or not result["ok"]:
        raise RuntimeError(
            f"{producer[0]} delivered {result['bytes']} bytes (ok={result['ok']},"
            f" exit {source.returncode}: {errors.decode(errors='replace')[-300:]});"
            f" expected {size} zero bytes"
        )
    return size / elapsed / (1 << 20)


def raw_pipe(size: int) -> float:
    """The floor: `head -c SIZE /dev/zero | sink`, in MiB/s."""
    return timed_pipeline(["head", "-c", str(size), "/dev/zero"], size)


@attrs.define
class Sshd:
    """An sshd of our own on 127.0.0.1 with a throwaway host key and root's key."""

    port: int
    key: Path

    def argv(self, command: str) -> list[str]:
        ssh = which("ssh")
        assert ssh is not None
        return [
            ssh, "-i", str(self.key), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command,
        ]  # fmt: skip


@contextlib.contextmanager
def running_sshd() -> Iterator[Sshd]:
    """Start sshd (root, loopback, a free port) and stop it on exit; its files are removed."""
    sshd, keygen = which("sshd"), which("ssh-keygen")
    if sshd is None or keygen is None:
        raise RuntimeError("sshd is needed: apt-get install openssh-server openssh-client")
    made_run_dir = not Path("/run/sshd").exists()
    if made_run_dir:  # sshd refuses to start without its privilege-separation dir
        Path("/run/sshd").mkdir(mode=0o755)
    with tempfile.TemporaryDirectory(prefix="jwbench-sshd-") as tmp:
        directory = Path(tmp)
        for name in ("host", "client"):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True
            )
        (directory / "authorized_keys").write_text((directory / "client.pub").read_text())
        port = _free_port()
        config = directory / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n"
        )
        log_path = directory / "sshd.log"
        with log_path.open("wb") as log_file:  # a file, not a pipe nobody reads
            process = subprocess.Popen(
                [sshd, "-f", str(config), "-D", "-e"], stderr=log_file, stdin=subprocess.DEVNULL
            )
        try:
            server = Sshd(port, directory / "client")
            _wait_for_port(port, process, log_path)
            yield server
        finally:
            stop_process(process)
            if made_run_dir:
                shutil.rmtree("/run/sshd", ignore_errors=True)


def ssh_stream(server: Sshd, size: int) -> float:
    """`ssh 127.0.0.1 'head -c SIZE /dev/zero' | sink` (a new connection each), in MiB/s."""
    return timed_pipeline(server.argv(f"head -c {size} /dev/zero"), size)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM `process`, then SIGKILL it if it has not exited within `timeout` seconds; reap it."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("sshd did not start: " + log_path.read_text(errors="replace"))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.02)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {timeout} s")
