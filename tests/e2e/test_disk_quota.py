"""The disk quota per user and the records' reserve, against a real `jwsd` on a small
data dir (issue 18 item 6): one user's output cannot fill the disk for the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import Jwsd, restart_jwsd, start_jwsd
from tests.e2e.test_quotas import small_disk
from tests.support.certs import TestPKI

pytestmark = [pytest.mark.root, pytest.mark.e2e]

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
            filler = jwsd.jws("run", "--", "head", "-c", "50M", "/dev/zero")
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


def test_a_running_job_holds_its_cap_and_smaller_caps_share_the_quota(
    tmp_path: Path, pki: TestPKI
) -> None:
    """A running job holds its whole output cap: under a 4 MiB quota alex's first
    `sleep` takes all of it and his second start is refused; jobs asking for 1 MiB
    each run side by side, and the quota is back once the first has ended."""
    require_root()
    jwsd = start_jwsd(tmp_path, pki, "--max-disk-per-user", "4M")
    try:
        whole = jwsd.jws("start", "--", "sleep", "60").stdout.decode().strip()
        refused = jwsd.jws("start", "--max-output", "1M", "--", "true")
        assert "disk quota per user (4.0 MiB" in refused.stderr.decode(), refused.stderr
        assert jwsd.jws("stop", "-j", whole).returncode == 0  # it kept 0 bytes
        small = [jwsd.jws("start", "--max-output", "1M", "--", "sleep", "60") for _ in range(4)]
        assert all(started.returncode == 0 for started in small), small
        fifth = jwsd.jws("start", "--max-output", "1M", "--", "true")
        assert "disk quota per user" in fifth.stderr.decode(), fifth.stderr
    finally:
        assert jwsd.stop() == 0, jwsd.log
