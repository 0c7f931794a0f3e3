"""jwsd's limit flags: the safe defaults it shows are the ones it applies."""

from __future__ import annotations

import subprocess

import pytest

from jobworker.cli.jwsd import parse_tmpfs_size
from jobworker.jobs.config import DEFAULT_LIMITS, DEFAULT_TMPFS_SIZE
from jobworker.limits import format_limits, parse_limits
from jobworker.model import Limits
from jobworker.server.daemon import DaemonConfig
from tests.e2e.conftest import BIN


def test_jobs_that_ask_for_nothing_get_memory_pids_and_cpu_limits() -> None:
    assert Limits(cpu=1.0, memory=512 << 20, pids=256) == DEFAULT_LIMITS
    assert DaemonConfig(tls_dir=BIN).jobs.default_limits == DEFAULT_LIMITS
    assert DaemonConfig(tls_dir=BIN).jobs.tmpfs_size == DEFAULT_TMPFS_SIZE == 64 << 20


@pytest.mark.parametrize(
    "limits",
    [
        DEFAULT_LIMITS,
        Limits(),
        Limits(cpu=0.25, memory=(1 << 30) + 1, io_read_bps=10 << 20, io_write_bps=5 << 10, pids=7),
    ],
)
def test_limits_are_shown_in_the_form_the_flag_reads(limits: Limits) -> None:
    assert parse_limits(format_limits(limits)) == limits


def test_tmpfs_size_takes_a_size_or_none() -> None:
    assert parse_tmpfs_size("64M") == 64 << 20
    assert parse_tmpfs_size("none") is None
    with pytest.raises(ValueError, match="below 1M"):
        parse_tmpfs_size("4K")


def test_help_shows_every_default() -> None:
    helped = subprocess.run([str(BIN / "jwsd"), "--help"], capture_output=True, timeout=30)
    text = " ".join(helped.stdout.decode().split())
    assert "[default: cpu=1,memory=512M,pids=256]" in text
    assert "--tmpfs-size" in text
    assert "[default: 64M]" in text
    assert "--job-uids FIRST-LAST" in text
    assert "[default: 1879048192-1879113727]" in text


def test_the_disk_quota_flag_defaults_to_auto_and_reaches_the_tracker() -> None:
    helped = subprocess.run([str(BIN / "jwsd"), "--help"], capture_output=True, timeout=30)
    text = " ".join(helped.stdout.decode().split())
    assert "--max-disk-per-user SIZE" in text and "0: no quota. [default: auto]" in text
    assert DaemonConfig(tls_dir=BIN).jobs.max_disk_per_user == "auto"
    config = DaemonConfig.of(tls_dir=BIN, max_disk_per_user=10 << 20)
    assert config.jobs.max_disk_per_user == 10 << 20
