"""`just bench` / `python -m tests.bench [--quick] [--json] [--only GROUP...] [--profile DIR]`.

Runs a real jwsd (root, loopback, throwaway mTLS certificates), the peers (fork+exec,
bubblewrap alone, runc, a raw pipe, OpenSSH with its own sshd, the same proto on a
grpcio server), and measures each in the same run on the same machine:

start       StartJob (returns when Active) with cpu/memory/pids limits, vs the peers
            running `true` to completion; p50 and p99
throughput  a job writes N bytes, one follower reads them (`jws run ... | sink`,
            and the Python client); vs a raw pipe, ssh and the grpcio server
fanout      F followers of one job writing a random pattern; all byte-exact,
            wall time, jwsd peak RSS
load        J concurrent `sleep` jobs with limits: time to start all, jwsd RSS,
            host memory per job, GetJobStatus p99 while they run
rpc         GetJobStatus from 50 clients: rate and p99, vs the grpcio server
isolation   a writer's run time with 0 vs S slow followers
fairness    user B's GetJobStatus p99 and StartJob p50 alone, then while user A runs
            CPU hogs, output floods and their followers; the ratio (target <= 2x)
observe     metrics and the audit trail on (this jwsd, scraped every second) against
            off (a second jwsd, --no-audit): the start and RPC-rate rows, alternately
durable     a jwsd of its own SIGKILLed with N jobs running: the time from the new
            jwsd's exec to serving with every job taken over (vs a restart with no
            jobs); PSS per job of bubblewrap's processes + the output copier; a
            finished job's output replayed after a restart (vs following one live)

Every byte counted is checked against known content. With --profile, py-spy
samples jwsd during the throughput and fan-out runs (separate runs, so the
sampling does not change the table) and the top frames are printed.
Everything started is stopped and removed at the end: processes, temp dirs,
cgroups, runc state, sshd.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from jobworker.sandbox.cgroups.base import owner_group
from tests.bench import observe, peers
from tests.bench.durable import JWSD_FLAGS, RestartableJwsd, job_processes, remove_cgroups
from tests.bench.machine import (
    CpuSampler,
    ensure_peer_programs,
    facts,
    memory_cgroup_of,
    pss_kib,
    status_kib,
    which,
)
from tests.bench.results import Report, percentile
from tests.e2e.conftest import Jwsd, start_jwsd
from tests.support.certs import TestPKI

GROUPS = (
    "start",
    "throughput",
    "fanout",
    "load",
    "rpc",
    "isolation",
    "fairness",
    "durable",
    "observe",
)
MiB = 1 << 20


@attrs.frozen
class Sizes:
    """How big each measurement is; `runs` repeats the cheap ones for min-max."""

    runs: int
    start_runs: int
    throughput_runs: int
    starts: int
    throughput: int
    fanout_followers: int
    fanout_bytes: int
    load_jobs: int
    rpc_clients: int
    rpc_seconds: float
    slow_followers: int
    writer_bytes: int
    hogs: int
    floods: int
    flood_followers: int
    durable_jobs: int
    durable_runs: int
    replay: int


FULL = Sizes(
    runs=3,
    # 2 x 200 starts of each path, and 2 x 1 GiB through each output path: with the
    # fan-out row at the brief's size (~6 minutes alone) the run stays under 10 minutes.
    start_runs=2,
    throughput_runs=2,
    starts=200,
    throughput=1 << 30,
    fanout_followers=1000,
    fanout_bytes=100 * MiB,
    load_jobs=1000,
    rpc_clients=50,
    rpc_seconds=2,
    slow_followers=100,
    writer_bytes=64 * MiB,
    hogs=16,
    floods=4,
    flood_followers=25,
    durable_jobs=1000,
    durable_runs=3,
    replay=1 << 30,
)
QUICK = Sizes(
    runs=1,
    start_runs=1,
    throughput_runs=1,
    starts=30,
    throughput=32 * MiB,
    fanout_followers=50,
    fanout_bytes=2 * MiB,
    load_jobs=50,
    rpc_clients=50,
    rpc_seconds=2,
    slow_followers=20,
    writer_bytes=32 * MiB,
    hogs=4,
    floods=2,
    flood_followers=5,
    durable_jobs=50,
    durable_runs=1,
    replay=64 * MiB,
)

#: Seconds a follower-test job waits before writing, so every follower is attached
#: when the first byte is written (the benchmark follows live output, not a log).
ATTACH_SECONDS = 2.0


def load(command: str, addr: str, tls_dir: Path, *options: str, timeout: float = 600) -> Any:
    """Run `python -m tests.bench.load COMMAND ADDR TLS_DIR OPTIONS`; its JSON answer.
    Raises RuntimeError with its stderr when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.load", command, addr, str(tls_dir), *options],
        capture_output=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load {command} failed: {done.stderr.decode(errors='replace')[-800:]}")
    return json.loads(done.stdout)


def load_async(command: str, addr: str, tls_dir: Path, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bench.load", command, addr, str(tls_dir), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def collect(process: subprocess.Popen[bytes], timeout: float = 600) -> Any:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"load failed: {err.decode(errors='replace')[-800:]}")
    return json.loads(out)


@attrs.define(eq=False)
class Bench:
    """One run: the daemons under test, the sizes, and the report being filled."""

    sizes: Sizes
    report: Report
    daemon: Jwsd | None
    tls: Path
    grpcio_addr: str
    workspace: Path
    sshd: peers.Sshd | None
    profile_dir: Path | None
    pki: TestPKI

    @property
    def jwsd(self) -> Jwsd:
        if self.daemon is None:
            raise RuntimeError("jwsd is not running (see its start error above)")
        return self.daemon

    def _attempt(self, group: str, path: str, measure: Any) -> Any:
        """measure(), or None after recording its error (once per path): one broken
        path must not hide the others' figures."""
        try:
            return measure()
        except Exception as exc:
            error = f"{group} / {path}: {type(exc).__name__}: {exc}"
            if error not in self.report.errors:
                self.report.errors.append(error)
            return None

    # ---- start latency ---------------------------------------------------

    def start(self) -> None:
        sizes, group = self.sizes, "start latency (request → command running)"
        note = (
            f"{sizes.starts} starts per run; jobworker: StartJob of `true` with cpu=1, memory=256M,"
            " pids=64 over one mTLS connection until it returns Active; peers: `true` run to"
            " completion (runc with the same limits in config.json)"
        )
        paths: list[tuple[str, bool, Any]] = [
            ("jobworker StartJob", True, self._jobworker_starts),
            ("fork+exec true (floor)", False, lambda: peers.fork_exec_true(sizes.starts)),
            (
                "setpriv+bwrap true, jobworker's flags",
                False,
                lambda: peers.bwrap_true(sizes.starts, self.workspace / "bwrap"),
            ),
        ]
        if which("runc") and which("busybox"):
            paths.append(("runc run busybox true", False, lambda: peers.runc_true(sizes.starts)))
        for _ in range(sizes.start_runs):
            for path, subject, measure in paths:
                samples = self._attempt(group, path, measure)
                if samples is None:
                    continue
                for metric, fraction in (("p50", 0.5), ("p99", 0.99)):
                    self.report.row(
                        group, path, metric, "ms", subject=subject, note=note
                    ).samples.append(percentile(samples, fraction))

    def _jobworker_starts(self) -> list[float]:
        result = load("starts", self.jwsd.addr, self.tls, "--count", str(self.sizes.starts))
        return list(result["ms"])

    # ---- output throughput -----------------------------------------------

    def throughput(self, runs: int | None = None) -> None:
        size = self.sizes.throughput
        group = "output throughput (one follower)"
        note = (
            f"{size // MiB:,} MiB of zeros per run, every byte checked (count + memcmp); wall time"
            " of the whole command as typed, process start and connection set-up included"
        )
        # The console script's code, run by this interpreter (an installed script can be stale).
        jws = [sys.executable, "-c", "from jobworker.cli.jws import cli; cli()"]
        grpcio_env = dict(os.environ, JWS_ADDR=self.grpcio_addr, JWS_TLS_DIR=str(self.tls))
        grpcio_env.pop("JWS_USER", None)
        paths: list[tuple[str, bool, Any]] = [
            (
                "jobworker: jws run -- head -c N /dev/zero",
                True,
                lambda: peers.timed_pipeline(
                    [*jws, "run", "-u", "alex", "--", "head", "-c", str(size), "/dev/zero"],
                    size,
                    env=self.jwsd.env(),
                ),
            ),
            ("jobworker: Python client (start + follow)", False, self._client_follow),
            ("raw pipe: head → sink (floor)", False, lambda: peers.raw_pipe(size)),
            (
                "grpcio server, same proto: jws output",
                False,
                lambda: peers.timed_pipeline(
                    [*jws, "output", "-u", "alex", "-j", f"zeros:{size}"], size, env=grpcio_env
                ),
            ),
            ("grpcio server, same proto: Python client", False, self._client_follow_grpcio),
        ]
        if self.sshd is not None:
            sshd = self.sshd
            paths.append(
                ("ssh 127.0.0.1 head -c N /dev/zero", False, lambda: peers.ssh_stream(sshd, size))
            )
        for _ in range(runs or self.sizes.throughput_runs):
            for path, subject, measure in paths:
                rate = self._attempt(group, path, measure)
                if rate is not None:
                    self.report.row(
                        group, path, "throughput", "MiB/s", higher_is_better=True,
                        subject=subject, note=note,
                    ).samples.append(rate)  # fmt: skip

    def _client_follow(self) -> float:
        size = self.sizes.throughput
        result = load(
            "follow", self.jwsd.addr, self.tls,
            "--start", f"exec head -c {size} /dev/zero", "--expect", f"zeros:{size}",
        )  # fmt: skip
        return self._checked_rate(result, size, 1)

    def _client_follow_grpcio(self) -> float:
        size = self.sizes.throughput
        result = load(
            "follow",
            self.grpcio_addr,
            self.tls,
            "--job",
            f"zeros:{size}",
            "--expect",
            f"zeros:{size}",
        )
        return self._checked_rate(result, size, 1)

    @staticmethod
    def _checked_rate(result: dict[str, Any], size: int, followers: int) -> float:
        if result["complete"] != followers or result["bytes"] != size * followers:
            raise RuntimeError(f"followers got wrong output: {result}")
        return float(size * followers / result["seconds"] / MiB)

    # ---- fan-out -----------------------------------------------------------

    def fanout(self) -> None:
        sizes, group = self.sizes, "fan-out (one job, many followers)"
        followers, size = sizes.fanout_followers, sizes.fanout_bytes
        pattern_dir = Path(
            tempfile.mkdtemp(prefix="jwbench-", dir="/var/tmp")
        )  # /tmp is hidden from jobs
        try:
            pattern_dir.chmod(0o755)
            pattern = pattern_dir / "pattern"
            pattern.write_bytes(os.urandom(size))
            pattern.chmod(0o644)
            note = (
                f"{followers:,} followers (grpcio's C-core client) over 2 processes × 10 connections; the job waits"
                f" {ATTACH_SECONDS:.0f} s, then `cat`s {size // MiB} MiB of random bytes; every follower"
                " compares every byte with the file; wall time from the first byte to the last follower"
            )
            for _ in range(sizes.runs if followers <= 100 else 1):
                job_id = load(
                    "start-many", self.jwsd.addr, self.tls, "--count", "1", "--concurrency", "1",
                    "--command", f"sleep {ATTACH_SECONDS}; exec cat {pattern}",
                )["job_ids"][0]  # fmt: skip
                sampler = CpuSampler(self.jwsd.process.pid)
                processes = [
                    load_async(
                        "follow-grpcio",
                        self.jwsd.addr,
                        self.tls,
                        "--job",
                        job_id,
                        "--followers",
                        str(followers // 2 + followers % 2 * (1 - index)),
                        "--connections",
                        "10",
                        "--expect",
                        f"file:{pattern}",
                    )  # fmt: skip
                    for index in range(2)
                ]
                with sampler:
                    results = [collect(process) for process in processes]
                complete = sum(result["complete"] for result in results)
                total = sum(result["bytes"] for result in results)
                if complete != followers or total != followers * size:
                    raise RuntimeError(
                        f"fan-out: {complete}/{followers} followers byte-exact, {total} bytes: {results}"
                    )
                wall = max(r["done_at"] for r in results) - min(r["first_byte_at"] for r in results)
                hwm = status_kib(self.jwsd.process.pid, "VmHWM") / 1024
                # Who used the two cores from the first byte to the last: jwsd, the followers.
                first = min(r["first_byte_at"] for r in results)
                jwsd_cores = sampler.cores_between(first, first + wall)
                follower_cores = sum(r["cpu_seconds"] for r in results) / wall
                rows = (
                    ("followers byte-exact", "count", float(complete), True),
                    ("wall time", "s", wall, False),
                    ("aggregate", "MiB/s", total / wall / MiB, True),
                    ("jwsd peak RSS (VmHWM)", "MiB", hwm, False),
                    ("jwsd CPU", "cores", jwsd_cores, False),
                    ("follower processes' CPU", "cores", follower_cores, False),
                )
                for metric, unit, value, higher in rows:
                    self.report.row(
                        group, f"jobworker, {followers:,} × {size // MiB} MiB", metric, unit,
                        higher_is_better=higher, subject=True, note=note,
                    ).samples.append(value)  # fmt: skip
        finally:
            shutil.rmtree(pattern_dir, ignore_errors=True)

    # ---- load ---------------------------------------------------------------

    def load(self) -> None:
        sizes, group = self.sizes, "load (concurrent running jobs with limits)"
        count = sizes.load_jobs
        path = f"jobworker, {count:,} × `sleep`"
        note = (
            f"{count:,} `sleep 3600` jobs with cpu=1, memory=256M, pids=64, started 50 at a time over"
            " 4 connections; per-job memory: the job's processes (bwrap ×2 + sleep; RSS counts shared"
            " pages once per process, PSS splits them) and its memory cgroup's usage"
        )
        pid = self.jwsd.process.pid
        rss_before = status_kib(pid, "VmRSS") / 1024
        started = load(
            "start-many", self.jwsd.addr, self.tls, "--count", str(count), "--concurrency", "50",
            "--connections", "4",
        )  # fmt: skip
        job_ids: list[str] = started["job_ids"]
        ids_file = self.workspace / "load-ids"
        ids_file.write_text("\n".join(job_ids))
        try:
            if len(job_ids) != count:
                raise RuntimeError(f"load: {len(job_ids)} of {count} jobs started")
            rss, cgroup_bytes, procs = [], [], []
            # the jobs' cgroups are in their owner's group (`owner_group`)
            parent = memory_cgroup_of(pid) / self.jwsd.cgroup_name / owner_group("alex")
            pss_total = 0
            for job_id in job_ids:
                directory = parent / job_id
                try:
                    pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
                except FileNotFoundError:  # the job has ended already: counted below
                    continue
                procs.append(len(pids))
                rss.append(sum(status_kib(p, "VmRSS") for p in pids) / 1024)
                pss_total += sum(pss_kib(p) for p in pids)
                cgroup_bytes.append(int((directory / "memory.usage_in_bytes").read_text()) / MiB)
            status = load(
                "rpc", self.jwsd.addr, self.tls, "--clients", "20", "--seconds", "3",
                "--jobs", ",".join(job_ids),
            )  # fmt: skip
            if status["errors"]:
                raise RuntimeError(f"GetJobStatus under load failed: {status['errors']}")
            rows = (
                ("time to start all", "s", started["seconds"], False),
                ("StartJob p99 at 50 in flight", "ms", started["p99_ms"], False),
                ("jwsd RSS growth", "MiB", status_kib(pid, "VmRSS") / 1024 - rss_before, False),
                ("jwsd RSS", "MiB", status_kib(pid, "VmRSS") / 1024, False),
                ("jobs still running when measured", "count", float(len(procs)), True),
                ("processes per job", "count", sum(procs) / max(1, len(procs)), False),
                ("host memory per job, RSS sum", "MiB", sum(rss) / max(1, len(procs)), False),
                (
                    "host memory per job, PSS sum",
                    "MiB",
                    pss_total / 1024 / max(1, len(procs)),
                    False,
                ),
                (
                    "memory cgroup usage per job",
                    "MiB",
                    sum(cgroup_bytes) / max(1, len(procs)),
                    False,
                ),
                ("GetJobStatus p99, 20 clients", "ms", status["p99_ms"], False),
                ("GetJobStatus rate, 20 clients", "req/s", status["rate"], True),
            )
            for metric, unit, value, higher in rows:
                self.report.row(
                    group, path, metric, unit, higher_is_better=higher, subject=True, note=note
                ).samples.append(value)
        finally:
            stopped = load("stop-many", self.jwsd.addr, self.tls, "--ids-file", str(ids_file))
            self.report.row(
                group, path, "time to stop all (grace 0)", "s", subject=True
            ).samples.append(stopped["seconds"])

    # ---- RPC rate ------------------------------------------------------------

    def rpc(self) -> None:
        sizes, group = self.sizes, "RPC rate (GetJobStatus)"
        note = (
            f"{sizes.rpc_clients} clients, one grpcio (C-core, asyncio) channel each, in one process,"
            f" for {sizes.rpc_seconds:.0f} s per run; jobworker answers for a running job"
        )
        job_id = load("start-many", self.jwsd.addr, self.tls, "--count", "1", "--concurrency", "1")[
            "job_ids"
        ][0]
        try:
            for _ in range(sizes.runs):
                for path, addr, subject in (
                    ("jobworker (purerpc)", self.jwsd.addr, True),
                    ("grpcio server, same proto", self.grpcio_addr, False),
                ):
                    result = load(
                        "rpc", addr, self.tls, "--clients", str(sizes.rpc_clients),
                        "--seconds", str(sizes.rpc_seconds), "--jobs", job_id,
                    )  # fmt: skip
                    if result["errors"]:
                        raise RuntimeError(f"{path}: GetJobStatus failed: {result['errors']}")
                    for metric, unit, value, higher in (
                        ("rate", "req/s", result["rate"], True),
                        ("p99", "ms", result["p99_ms"], False),
                    ):
                        self.report.row(
                            group,
                            path,
                            metric,
                            unit,
                            higher_is_better=higher,
                            subject=subject,
                            note=note,
                        ).samples.append(value)
        finally:
            ids_file = self.workspace / "rpc-ids"
            ids_file.write_text(job_id)
            load("stop-many", self.jwsd.addr, self.tls, "--ids-file", str(ids_file))

    # ---- metrics and audit, on against off -------------------------------------

    def observe(self) -> None:
        observe.observe(self, load)

    # ---- writer isolation ------------------------------------------------------

    def isolation(self) -> None:
        sizes, group = self.sizes, "isolation of the writer (slow followers)"
        size, slow = sizes.writer_bytes, sizes.slow_followers
        note = (
            f"the job waits {ATTACH_SECONDS:.0f} s, then writes {size // MiB} MiB of zeros; its run time"
            " (ended_at - started_at, minus the wait) with no follower and with followers that sleep"
            " 1 s after each 1 MiB chunk, over 10 connections; their bytes are checked too"
        )
        for _ in range(sizes.runs):
            times = {}
            for followers in (0, slow):
                result = load(
                    "follow", self.jwsd.addr, self.tls,
                    "--start", f"sleep {ATTACH_SECONDS}; exec head -c {size} /dev/zero",
                    "--followers", str(followers), "--connections", "10", "--slow", "1",
                    "--until-end", "--expect", f"zeros:{size}",
                )  # fmt: skip
                if result["prefix_ok"] != followers:
                    raise RuntimeError(f"isolation: a follower got wrong bytes: {result}")
                if result.get("exit_code") != 0:  # a figure to report, not a reason to stop
                    self.report.notes.append(
                        f"isolation: the writer with {followers} slow followers ended with exit"
                        f" code {result.get('exit_code')} after {result['job_seconds']:.1f} s"
                    )
                times[followers] = result["job_seconds"] - ATTACH_SECONDS
                self.report.row(
                    group, f"jobworker, {followers} slow followers", "writer run time", "s",
                    subject=followers == 0, note=note,
                ).samples.append(times[followers])  # fmt: skip
            self.report.row(
                group, f"jobworker, {slow} slow ÷ 0", "slowdown", "×", subject=True
            ).samples.append(times[slow] / times[0])

    # ---- fairness between users ---------------------------------------------------

    def fairness(self) -> None:
        sizes, group = self.sizes, "fairness (user B's calls while user A loads jwsd)"
        seconds = max(sizes.rpc_seconds, 2.0)
        note = (
            f"B: GetJobStatus from 4 grpcio clients for {seconds:.0f} s, then {sizes.starts} StartJob"
            f" of `true` one at a time; A: {sizes.hogs} busy loops, {sizes.floods} jobs writing"
            f" zeros as fast as they can, each with {sizes.flood_followers} followers checking"
            " every byte; every job with the bench's limits (cpu=1, memory=256M, pids=64)"
        )
        addr, tls = self.jwsd.addr, self.tls
        b_job = load("start-many", addr, tls, "--user", "betty", "--count", "1")["job_ids"]
        floods: list[subprocess.Popen[bytes]] = []

        def measure_b(path: str, subject: bool) -> tuple[float, float]:
            status = load(
                "rpc", addr, tls, "--user", "betty", "--clients", "4",
                "--seconds", str(seconds), "--jobs", b_job[0],
            )  # fmt: skip
            if status["errors"]:
                raise RuntimeError(f"fairness: B's GetJobStatus failed: {status['errors']}")
            starts = load(
                "starts",
                addr,
                tls,
                "--user",
                "betty",
                "--count",
                str(sizes.starts),
                "--warmup",
                "1",
            )["ms"]
            figures = (status["p99_ms"], percentile(starts, 0.5))
            for metric, value in zip(("GetJobStatus p99", "StartJob p50"), figures, strict=True):
                self.report.row(
                    group, path, metric, "ms", subject=subject, note=note
                ).samples.append(value)
            return figures

        try:
            alone = measure_b("user B alone", False)
            load(
                "start-many", addr, tls, "--user", "alex", "--count", str(sizes.hogs),
                "--concurrency", "4", "--command", "while :; do :; done",
            )  # fmt: skip
            flood_bytes = 64 << 30  # more than they can write before the deadline
            for _ in range(sizes.floods):
                floods.append(
                    load_async(
                        "follow",
                        addr,
                        tls,
                        "--user",
                        "alex",
                        "--start",
                        f"exec head -c {flood_bytes} /dev/zero",
                        "--followers",
                        str(sizes.flood_followers),
                        "--connections",
                        "5",
                        "--expect",
                        f"zeros:{flood_bytes}",
                        "--deadline",
                        str(3 * seconds + 30),
                    )  # fmt: skip
                )
            time.sleep(2)  # the floods' followers connect and their bytes flow
            loaded = measure_b(f"user B while A runs {sizes.hogs + sizes.floods} jobs", True)
            for metric, before, after in zip(
                ("GetJobStatus p99", "StartJob p50"), alone, loaded, strict=True
            ):
                self.report.row(
                    group, "B loaded ÷ B alone", metric, "×", subject=True, note="target <= 2x"
                ).samples.append(after / before)
        finally:
            for flood in floods:
                flood.terminate()
            for flood in floods:
                flood.wait(30)
            ids_file = self.workspace / "fairness-ids"
            ids_file.write_text("\n".join(b_job))
            load("stop-many", addr, tls, "--user", "betty", "--ids-file", str(ids_file))
            # The hogs, and the floods' jobs that their follow processes started.
            load("stop-many", addr, tls, "--user", "alex", "--all")

    # ---- durable jobs ------------------------------------------------------------

    def durable(self) -> None:
        """Take over N running jobs after jwsd is SIGKILLed, the PSS that holds each job
        outside jwsd, and the replay of a finished output after a restart: jwsds of
        their own (one with the jobs, one with none), every job stopped at the end,
        and nothing of them left (checked)."""
        daemons = [
            RestartableJwsd(self.workspace / "durable", self.pki),
            RestartableJwsd(self.workspace / "durable-empty", self.pki),
        ]
        try:
            for daemon in daemons:
                daemon.start()
            self._take_over(*daemons)
            self._replay(daemons[0])
        finally:
            for daemon in daemons:
                for left in daemon.close():
                    self.report.errors.append(f"durable: {left}")

    def _take_over(self, daemon: RestartableJwsd, empty: RestartableJwsd) -> None:
        sizes = self.sizes
        count, group = sizes.durable_jobs, "take over running jobs after jwsd is SIGKILLed"
        path = f"jobworker, {count:,} running `sleep` jobs"
        note = (
            f"{count:,} `sleep 3600` jobs with cpu=1, memory=256M, pids=64 (started 50 at a time);"
            " jwsd SIGKILLed, a new jwsd started on the same data dir: time from its exec to its"
            " 'listening' line (logged once every record is reconciled and every running job"
            " taken over); then every job checked Active (ListJobs); the restart with no jobs"
            " (its own jwsd) interleaved; PSS per job: bubblewrap's 2 processes + the copier"
        )
        tls = daemon.jwsd.tls_dir
        started = load(
            "start-many", daemon.jwsd.addr, tls, "--count", str(count), "--concurrency", "50",
            "--connections", "4",
        )  # fmt: skip
        job_ids = set(started["job_ids"])
        if len(job_ids) != count:
            raise RuntimeError(f"durable: {len(job_ids)} of {count} jobs started")
        try:
            for _ in range(sizes.durable_runs):
                empty.kill()
                floor = empty.start()
                self.report.row(
                    group, "jwsd with no jobs", "exec → serving", "s", note=note
                ).samples.append(floor)
                daemon.kill()
                took = daemon.start()
                states = load("states", daemon.jwsd.addr, tls)
                active = set(states["active"])
                if active != job_ids:
                    raise RuntimeError(
                        f"durable: after the restart {len(active & job_ids)} of {count} jobs"
                        f" Active: {states['states']}"
                    )
                for metric, unit, value in (
                    ("exec → serving", "s", took),
                    (
                        "per job, beyond the restart with no jobs",
                        "ms",
                        (took - floor) / count * 1000,
                    ),
                    ("jobs Active after the restart", "count", float(len(active))),
                ):
                    self.report.row(
                        group, path, metric, unit, subject=True, note=note,
                        higher_is_better=unit == "count",
                    ).samples.append(value)  # fmt: skip
            processes = job_processes(daemon.jwsd)
            held = [processes[job_id] for job_id in job_ids if job_id in processes]
            whole = [job for job in held if len(job.bwrap) == 2 and len(job.copier) == 1]
            if len(whole) != count:
                raise RuntimeError(
                    f"durable: {len(whole)} of {count} jobs have 2 bwrap processes and a copier"
                )
            copier = sum(pss_kib(job.copier[0]) for job in whole) / count
            held_kib = sum(job.pss_kib() for job in whole) / count
            for metric, unit, value in (
                ("copier PSS per job", "KiB", copier),
                ("bwrap ×2 + copier PSS per job", "MiB", held_kib / 1024),
                ("bwrap ×2 + copier + command PSS per job", "MiB",
                 sum(job.pss_kib(command=True) for job in whole) / count / 1024),
            ):  # fmt: skip
                self.report.row(group, path, metric, unit, subject=True, note=note).samples.append(
                    value
                )
        finally:
            stopped = load("stop-many", daemon.jwsd.addr, tls, "--all")
            if stopped["states"] != {"Terminated": count}:
                self.report.errors.append(f"durable: stopping the jobs: {stopped['states']}")

    def _replay(self, daemon: RestartableJwsd) -> None:
        size, group = self.sizes.replay, "output replay after a restart (one follower)"
        note = (
            f"{size // MiB:,} MiB of zeros, every byte checked; the Python client (start + follow,"
            " the throughput group's row) following the job live, then jwsd SIGKILLed and"
            " started again and the same client reading the finished job's output from byte 0"
            " (GetJobOutput; the file is in the page cache); connection set-up included"
        )
        for _ in range(self.sizes.durable_runs):
            jwsd = daemon.jwsd
            live = load(
                "follow", jwsd.addr, jwsd.tls_dir,
                "--start", f"exec head -c {size} /dev/zero", "--expect", f"zeros:{size}",
            )  # fmt: skip
            self.report.row(
                group, "jobworker: Python client, live (start + follow)", "throughput", "MiB/s",
                higher_is_better=True, note=note,
            ).samples.append(self._checked_rate(live, size, 1))  # fmt: skip
            daemon.kill()
            daemon.start()
            jwsd = daemon.jwsd
            replay = load(
                "follow", jwsd.addr, jwsd.tls_dir,
                "--job", live["job_id"], "--expect", f"zeros:{size}",
            )  # fmt: skip
            self.report.row(
                group, "jobworker: Python client, replay after a restart", "throughput", "MiB/s",
                higher_is_better=True, subject=True, note=note,
            ).samples.append(self._checked_rate(replay, size, 1))  # fmt: skip
            removed = jwsd.jws("rm", "-j", live["job_id"])  # its output is 1 GiB of disk
            if removed.returncode != 0:
                raise RuntimeError(f"jws rm failed: {removed.stderr.decode(errors='replace')}")

    # ---- profiles ----------------------------------------------------------------

    def profile(self) -> None:
        """py-spy on jwsd during one throughput run and one fan-out run."""
        assert self.profile_dir is not None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for name, work in (("throughput", self._profile_throughput), ("fanout", self.fanout)):
            output = self.profile_dir / f"jwsd-{name}.txt"
            recorder = subprocess.Popen(
                [py_spy, "record", "--nonblocking", "-r", "200", "-p", str(self.jwsd.process.pid),
                 "-o", str(output), "--format", "raw"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1)
            saved_rows = list(self.report.rows)
            try:
                work()
            finally:
                self.report.rows = saved_rows  # profiled runs stay out of the table
                recorder.send_signal(signal.SIGINT)
                recorder.wait(timeout=60)
            for line in top_frames(output):
                self.report.notes.append(f"profile {name}: {line}")

    def _profile_throughput(self) -> None:
        for _ in range(1):
            self._client_follow()


def top_frames(path: Path, count: int = 8) -> list[str]:
    """The functions with the most samples in a py-spy raw (collapsed) profile: self
    time (the leaf frame) and inclusive time (anywhere on the stack), in percent."""
    if not path.exists():
        return [f"no profile written to {path}"]
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        total += int(samples)
        own[frames[-1]] += int(samples)
        for frame in set(frames):
            inclusive[frame] += int(samples)
    if not total:
        return ["no samples"]
    lines = [f"self {100 * n / total:.1f}% {frame}" for frame, n in own.most_common(count)]
    lines += [
        f"inclusive {100 * n / total:.1f}% {frame}"
        for frame, n in inclusive.most_common(count * 3)
        if "trio/_core/_run.py" not in frame and "<module>" not in frame
    ][:count]
    return lines


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"; site-packages paths are long
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    tail = "/".join(parts[-2:]) if parts else file
    return f"{name} ({tail})"


def check_targets(report: Report) -> None:
    """Compare the run with the project's targets (where we are; nothing here fails)."""

    def median(group_prefix: str, path_prefix: str, metric: str) -> float | None:
        for row in report.rows:
            if (
                row.group.startswith(group_prefix)
                and row.path.startswith(path_prefix)
                and row.metric == metric
            ):
                return row.median
        return None

    def add(target: str, value: float | None, unit: str, met: bool | None) -> None:
        report.checks.append((target, "n/a" if value is None else f"{value:,.2f} {unit}", met))

    p50 = median("start", "jobworker", "p50")
    runc = median("start", "runc", "p50")
    add("start p50 ≤ 10 ms", p50, "ms", None if p50 is None else p50 <= 10)
    ratio = None if p50 is None or runc is None else runc / p50
    add("start p50 ≥ 2.5× faster than runc", ratio, "×", None if ratio is None else ratio >= 2.5)
    jws = median("output", "jobworker: jws", "throughput")
    ssh = median("output", "ssh", "throughput")
    pipe = median("output", "raw pipe", "throughput")
    add("output ≥ ssh (jws run ÷ ssh)", None if jws is None or ssh is None else jws / ssh, "×",
        None if jws is None or ssh is None else jws >= ssh)  # fmt: skip
    add("output ≥ 1/3 raw pipe (jws run ÷ pipe)", None if jws is None or pipe is None else jws / pipe, "×",
        None if jws is None or pipe is None else jws >= pipe / 3)  # fmt: skip
    hwm = median("fan-out", "jobworker", "jwsd peak RSS (VmHWM)")
    exact = median("fan-out", "jobworker", "followers byte-exact")
    add("fan-out: all byte-exact", exact, "followers", None if exact is None else True)
    add("fan-out: jwsd peak RSS < 512 MiB", hwm, "MiB", None if hwm is None else hwm < 512)
    start_all = median("load", "jobworker", "time to start all")
    per_job = median("load", "jobworker", "host memory per job, PSS sum")
    add(
        "load: all jobs started in < 20 s",
        start_all,
        "s",
        None if start_all is None else start_all < 20,
    )
    add(
        "load: ≤ 4 MiB host memory per job (PSS)",
        per_job,
        "MiB",
        None if per_job is None else per_job <= 4,
    )
    rate = median("RPC", "jobworker", "rate")
    add("GetJobStatus ≥ 3,000 req/s", rate, "req/s", None if rate is None else rate >= 3000)
    for metric in ("GetJobStatus p99", "StartJob p50"):
        slowdown = median("fairness", "B loaded", metric)
        add(f"fairness: B's {metric} loaded ≤ 2× alone", slowdown, "×",
            None if slowdown is None else slowdown <= 2)  # fmt: skip
    for row in report.rows:
        if row.group.startswith("take over") and row.metric == "jobs Active after the restart":
            jobs = int(row.path.split()[1].replace(",", ""))
            add(f"durable: all {jobs:,} jobs Active after each restart", row.low, "jobs",
                row.low == jobs)  # fmt: skip
    held = median("take over", "jobworker", "bwrap ×2 + copier PSS per job")
    add("durable: ≤ 4 MiB PSS per job (bwrap ×2 + copier)", held, "MiB",
        None if held is None else held <= 4)  # fmt: skip


@contextlib.contextmanager
def grpcio_server(tls_dir: Path, log_path: Path) -> Iterator[str]:
    """The grpcio peer server as a subprocess; yields its address; stopped on exit."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.grpcio_server", str(tls_dir)], stderr=log_file
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if "listening on " in text:
                yield text.split("listening on ", 1)[1].split()[0]
                return
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            "the grpcio server did not start: " + log_path.read_text(errors="replace")
        )
    finally:
        peers.stop_process(process)


@contextlib.contextmanager
def running_jwsd(workspace: Path, pki: TestPKI) -> Iterator[Jwsd]:
    """A real jwsd on loopback; stopped (SIGTERM, then SIGKILL) and its cgroups checked on exit.

    Without the running quota, the output cap and the connection cap: the load row runs
    1,000 jobs of one user, the fairness row's floods write more than 1 GiB each, and the
    RPC row's 50 clients are one user."""
    daemon = start_jwsd(workspace, pki, *JWSD_FLAGS, "--metrics-addr", "127.0.0.1:0")
    try:
        yield daemon
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.stop(timeout=60)
        remove_cgroups(daemon.cgroup_name)  # jwsd removes them; this only acts if it crashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="the same rows with small sizes (< 1 min)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument(
        "--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="run these groups"
    )
    parser.add_argument(
        "--profile", type=Path, help="also profile jwsd with py-spy; write profiles here"
    )
    parser.add_argument("--fanout-mib", type=int, help="bytes the fan-out job writes, in MiB")
    parser.add_argument("--fanout-followers", type=int, help="followers in the fan-out row")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmarks need root: jwsd, cgroups and runc do (try sudo)", file=sys.stderr)
        return 2
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: jwsd, sshd, the grpcio
    # server and every temp dir are still stopped and removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = QUICK if args.quick else FULL
    if args.fanout_mib:
        sizes = attrs.evolve(sizes, fanout_bytes=args.fanout_mib * MiB)
    if args.fanout_followers:
        sizes = attrs.evolve(sizes, fanout_followers=args.fanout_followers)
    notes: list[str] = []
    missing = ensure_peer_programs(notes)
    if missing:
        notes.append(f"missing, their rows are left out: {', '.join(missing)}")
    report = Report(facts(args.quick), notes=notes)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        workspace = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jwbench-")))
        workspace.chmod(0o711)  # the job user (nobody) passes through to the bwrap peer's work dir
        pki = TestPKI()
        tls = pki.write_tls_dir(workspace / "tls", ["alex", "betty"])
        daemon: Jwsd | None = None
        try:
            daemon = stack.enter_context(running_jwsd(workspace / "jwsd", pki))
        except Exception as exc:  # the peers' rows are still worth having
            report.errors.append(f"jwsd did not start: {str(exc)[-600:]}")
        grpcio_addr = stack.enter_context(grpcio_server(tls, workspace / "grpcio.log"))
        sshd = stack.enter_context(peers.running_sshd()) if which("sshd") and which("ssh") else None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        bench = Bench(sizes, report, daemon, tls, grpcio_addr, workspace, sshd, args.profile, pki)
        for group in args.only:
            group_began = time.monotonic()
            try:
                getattr(bench, group)()
            except Exception as exc:
                report.errors.append(f"{group}: {type(exc).__name__}: {exc}")
            took = time.monotonic() - group_began
            print(f"bench: {group} took {took:.1f} s", file=sys.stderr)
            if daemon is not None:  # which group grew jwsd (peak and current RSS)
                report.notes.append(
                    f"jwsd after {group} ({took:.0f} s): VmHWM {status_kib(daemon.process.pid, 'VmHWM') / 1024:.0f} MiB,"
                    f" VmRSS {status_kib(daemon.process.pid, 'VmRSS') / 1024:.0f} MiB"
                )
        if daemon is not None and report.errors:
            tail = [line for line in daemon.log.splitlines() if " INFO " not in line][-12:]
            report.errors += [f"jwsd log: {line}" for line in tail]
        if args.profile:
            try:
                bench.profile()
            except Exception as exc:
                report.errors.append(f"profile: {type(exc).__name__}: {exc}")
    check_targets(report)
    report.notes.append(f"the whole run took {time.monotonic() - began:.0f} s")
    print(report.json() if args.json else report.markdown())
    return 1 if report.errors else 0
