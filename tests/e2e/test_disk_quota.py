"""The disk quota per user and the records' reserve, against a real `jwsd` on a small
data dir (issue 18 item 6): one user's output cannot fill the disk for the others."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import Jwsd, restart_jwsd, start_jwsd
from tests.e2e.test_quotas import small_disk
from tests.support.certs import TestPKI

# Nothing here depends on the cgroup hierarchy: CI runs it on its host only. What the
# v2 VM's small disk (7.8 GiB) does to the quota is tests/unit/test_disk.py's, and the
# VM's own runs of the CPU-share and forty-jobs tests (the auto quota, 1 GiB outputs).
pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.hierarchy_independent]

MiB = 1 << 20


def job_ids(jwsd: Jwsd, user: str = "alex") -> list[str]:
    return [job["job_id"] for job in json.loads(jwsd.jws("list", "--json", user=user).stdout)]


def test_one_users_writer_is_cut_at_the_quota_and_another_user_still_starts(
    tmp_path: Path, pki: TestPKI
) -> None:
    """On a 30 MiB data dir alex's job writing 50 MiB used to fill it, and betty's
    `jws run -- echo hello` then failed (its record could not be written). With a
    10 MiB quota alex's output stops at 10 MiB, his status says the quota cut it, and
    betty's job runs and prints hello."""
    require_root()
    with small_disk(tmp_path / "data", "30m"):
        jwsd = start_jwsd(tmp_path, pki, "--max-disk-per-user", "10M")
        try:
            writer = jwsd.jws("run", "--", "head", "-c", "50M", "/dev/zero")
            assert len(writer.stdout) == 10 * MiB, writer.stderr.decode()
            assert "output truncated: the disk quota per user (10.0 MiB" in writer.stderr.decode()
            status = jwsd.jws("status", "-j", job_ids(jwsd)[0]).stdout.decode()
            assert "truncated  the disk quota per user (10.0 MiB, jwsd --max-disk-per-user)" in (
                status
            ), status
            hello = jwsd.jws("run", "--", "echo", "hello", user="betty")
            assert hello.returncode == 0, hello.stderr.decode()
            assert hello.stdout == b"hello\n"
        finally:
            assert jwsd.stop() == 0, jwsd.log


def test_a_used_up_quota_refuses_a_start_and_jws_rm_gives_the_space_back(
    tmp_path: Path, pki: TestPKI
) -> None:
    """Alex's 4 MiB of kept output use up his 4 MiB quota: his next start is refused,
    naming the quota (RESOURCE_EXHAUSTED), betty's is not, a restart of jwsd counts
    it again from the records; `jws rm` frees it."""
    require_root()
    first_run = start_jwsd(tmp_path, pki, "--max-disk-per-user", "4M")
    try:
        assert len(first_run.jws("run", "--", "head", "-c", "8M", "/dev/zero").stdout) == 4 * MiB
    finally:
        assert first_run.stop() == 0, first_run.log
    jwsd = restart_jwsd(first_run, pki, "--max-disk-per-user", "4M")
    try:
        refused = jwsd.jws("start", "--", "echo", "again")
        assert refused.returncode != 0
        message = refused.stderr.decode()
        assert "resource exhausted" in message.lower() or "quota" in message, message
        assert "disk quota per user (4.0 MiB, jwsd --max-disk-per-user)" in message, message
        assert jwsd.jws("run", "--", "true", user="betty").returncode == 0
        (job_id,) = job_ids(jwsd)
        assert jwsd.jws("rm", "-j", job_id).returncode == 0
        again = jwsd.jws("run", "--", "echo", "again")
        assert again.returncode == 0, again.stderr.decode()
        assert again.stdout == b"again\n"
    finally:
        assert jwsd.stop() == 0, jwsd.log


def test_a_full_disk_leaves_room_for_another_users_record(tmp_path: Path, pki: TestPKI) -> None:
    """With the quota at the whole disk (auto on a 30 MiB disk) alex fills it; the
    store's reserve is freed for betty's record, and her job still runs."""
    require_root()
    with small_disk(tmp_path / "data", "30m"):
        jwsd = start_jwsd(tmp_path, pki)
        try:
            # In 1 MiB writes, paced: the quota's windows follow it (a writer a window
            # faster than jwsd would be cut at its window, a test of something else).
            filler = jwsd.jws("run", "--", "sh", "-c", chunked_writer(50))
            assert "No space left on device" in filler.stderr.decode(), filler.stderr.decode()
            hello = jwsd.jws("run", "--", "echo", "hello", user="betty")
            assert hello.returncode == 0, hello.stderr.decode() + jwsd.log
            assert hello.stdout == b"hello\n"
            stopped = jwsd.jws("start", "--", "sleep", "60", user="betty")
            assert stopped.returncode == 0, stopped.stderr.decode()
            job_id = stopped.stdout.decode().strip()
            assert jwsd.jws("stop", "-j", job_id, user="betty").returncode == 0
            assert "Terminated" in jwsd.jws("status", "-j", job_id, user="betty").stdout.decode()
        finally:
            assert jwsd.stop() == 0, jwsd.log


def test_a_running_job_holds_one_window_so_jobs_at_the_default_output_limit_run_side_by_side(
    tmp_path: Path, pki: TestPKI
) -> None:
    """The reverted quota charged a running job its whole output cap (1 GiB): with the
    quota at 1.9 GiB (auto on CI's 7.8 GiB disk) a user ran one job at a time. Now a
    running job holds one window (16 MiB here): under a 64 MiB quota alex's four
    `sleep`s at the default output limit run side by side, a fifth is refused, and one
    that ends having written nothing gives its window back."""
    require_root()
    jwsd = start_jwsd(tmp_path, pki, "--max-disk-per-user", "64M")
    try:
        started = [jwsd.jws("start", "--", "sleep", "60") for _ in range(4)]
        assert all(job.returncode == 0 for job in started), [job.stderr for job in started]
        fifth = jwsd.jws("start", "--", "true")
        assert "disk quota per user (64.0 MiB" in fifth.stderr.decode(), fifth.stderr
        assert jwsd.jws("stop", "-j", started[0].stdout.decode().strip()).returncode == 0
        again = jwsd.jws("run", "--", "echo", "again")
        assert again.returncode == 0 and again.stdout == b"again\n", again.stderr
    finally:
        assert jwsd.stop() == 0, jwsd.log


def chunked_writer(mebibytes: int) -> str:
    """A shell script writing `mebibytes` MiB of zeros, 1 MiB at a time, 10 ms apart."""
    return (
        f"i=0; while [ $i -lt {mebibytes} ]; do head -c 1M /dev/zero; sleep 0.01; i=$((i+1)); done"
    )


def test_the_windows_follow_a_writer_to_the_quota_and_a_restart_keeps_them(
    tmp_path: Path, pki: TestPKI
) -> None:
    """Under a 48 MiB quota (16 MiB windows) alex's job A writes 2 MiB and waits: it
    holds one window. jwsd exits leaving it running; the next jwsd charges A the
    window its copier still has. Alex's writer B then gets window after window until
    the quota is used up, and is cut at exactly 32 MiB (48 less A's 16), its status
    naming the quota; betty runs meanwhile; A runs on and ends whole."""
    require_root()
    first_run = start_jwsd(tmp_path, pki, "--max-disk-per-user", "48M")
    try:
        waiting = first_run.jws("start", "--", "sh", "-c", "head -c 2M /dev/zero; exec sleep 600")
        assert waiting.returncode == 0, waiting.stderr.decode()
        job_a = waiting.stdout.decode().strip()
    finally:
        assert first_run.stop(signal.SIGUSR1) == 0, first_run.log
    jwsd = restart_jwsd(first_run, pki, "--max-disk-per-user", "48M")
    try:
        writer = jwsd.jws("run", "--", "sh", "-c", chunked_writer(64))
        assert len(writer.stdout) == 32 * MiB, writer.stderr.decode()
        assert (
            "output truncated: the disk quota per user (48.0 MiB, jwsd --max-disk-per-user) "
            f"was used up at byte {32 * MiB}"
        ) in writer.stderr.decode(), writer.stderr.decode()
        hello = jwsd.jws("run", "--", "echo", "hello", user="betty")
        assert hello.returncode == 0 and hello.stdout == b"hello\n", hello.stderr.decode()
        assert jwsd.jws("stop", "-j", job_a).returncode == 0
        status = jwsd.jws("status", "-j", job_a).stdout.decode()
        assert "output 2.0 MiB, work dir" in status, status
        assert "truncated" not in status, status
    finally:
        assert jwsd.stop() == 0, jwsd.log
