"""The job's view of the host, built from a fake root and a fake mountinfo."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from jobworker.errors import SetupError
from jobworker.sandbox.hostview import HostView, JobBind, parse_mountinfo

MOUNTINFO = (
    "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
    "2 1 0:5 / /opt/chroot/proc rw - proc proc rw\n"
    "3 2 0:6 / /opt/chroot/proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt rw\n"
    "4 1 8:1 /hosts /etc/hosts rw - ext4 /dev/sda1 rw\n"
    "5 1 0:7 / /etc/my\\040sock rw - tmpfs tmpfs rw\n"
)


def _root(tmp_path: Path) -> str:
    for directory in ["usr/bin", "etc/ssh", "opt/chroot/proc", "etc/my sock"]:
        (tmp_path / directory).mkdir(parents=True)
    os.symlink("usr/bin", tmp_path / "bin")
    for name in ["etc/hosts", "etc/shadow", "etc/ssh/ssh_host_ed25519_key"]:
        (tmp_path / name).write_text("x")
    return str(tmp_path)


def test_mount_points_are_unescaped() -> None:
    assert parse_mountinfo(MOUNTINFO)[-1].mount_point == "/etc/my sock"


def test_submounts_are_covered_and_ordinary_files_kept(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = HostView.build(
        can_read=lambda path: False, data_dir=Path("/d"), mountinfo=MOUNTINFO, root=root
    )
    options = list(view.options)
    assert options[options.index("/bin") - 2 : options.index("/bin") + 1] == [
        "--symlink", "usr/bin", "/bin",
    ]  # fmt: skip
    # The procfs (and what is mounted inside it) is one empty read-only tmpfs.
    assert options.count("/opt/chroot/proc") == 2
    assert "/opt/chroot/proc/sys/fs/binfmt_misc" not in options
    assert "/etc/my sock" in options
    assert "/etc/hosts" not in options  # a regular file of an ordinary filesystem
    assert "/etc/shadow" not in options  # unreadable by the job user: nothing to cover
    assert PurePosixPath("/opt/chroot/proc") in view.hidden
    assert PurePosixPath("/usr") in view.visible


def test_secrets_the_job_user_can_read_are_covered(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = HostView.build(
        can_read=lambda path: True, data_dir=Path("/d"), mountinfo=MOUNTINFO, root=root
    )
    options = list(view.options)
    for secret in ["/etc/shadow", "/etc/ssh/ssh_host_ed25519_key"]:
        i = options.index(secret)
        assert options[i - 2 : i] == ["--ro-bind", "/dev/null"]
        assert PurePosixPath(secret) in view.hidden


def test_a_job_bind_over_the_data_dir_or_on_procfs_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path)
    for source in ["/opt", "/opt/chroot/proc/1"]:
        bind = JobBind(source=PurePosixPath(source), target=PurePosixPath("/x"))
        with pytest.raises(SetupError, match="--job-bind"):
            HostView.build(
                can_read=lambda path: False,
                data_dir=Path("/opt/data"),
                binds=[bind],
                mountinfo=MOUNTINFO,
                root=root,
            )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/usr", JobBind(PurePosixPath("/usr"), PurePosixPath("/usr"))),
        ("/usr:/u:rw", JobBind(PurePosixPath("/usr"), PurePosixPath("/u"), writable=True)),
        ("/usr:ro", JobBind(PurePosixPath("/usr"), PurePosixPath("/usr"))),
    ],
)
def test_job_bind_values_parse(text: str, expected: JobBind) -> None:
    assert JobBind.parse(text) == expected
