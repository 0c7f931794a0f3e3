"""Program resolution and exit-status decoding, before and after a job runs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from jobworker.errors import StartFailedError
from jobworker.sandbox import bwrap, spawn
from jobworker.sandbox.bwrap import JobUser

NOBODY = JobUser(name="nobody", uid=65534, gid=65534)
ROOT = JobUser(name="root", uid=0, gid=0)


def _script(path: Path, mode: int) -> Path:
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(mode)
    return path


def test_programs_are_found_in_path_like_execvp() -> None:
    assert spawn.resolve_program("sh", path=None, cwd="/", user=NOBODY) in {
        "/usr/bin/sh",
        "/bin/sh",
        "/usr/local/bin/sh",
    }
    assert spawn.resolve_program("/bin/sh", path=None, cwd="/", user=NOBODY) == "/bin/sh"


def test_a_missing_program_is_an_error_naming_it() -> None:
    with pytest.raises(
        StartFailedError, match=r"program 'no-such-program' not found in PATH \(/nowhere\)"
    ):
        spawn.resolve_program("no-such-program", path="/nowhere", cwd="/", user=NOBODY)
    with pytest.raises(StartFailedError, match="cannot run '/no/such': no such file"):
        spawn.resolve_program("/no/such", path=None, cwd="/", user=NOBODY)


def test_a_directory_is_not_a_program() -> None:
    with pytest.raises(StartFailedError, match="is a directory"):
        spawn.resolve_program("/etc", path=None, cwd="/", user=NOBODY)


def test_execute_permission_is_judged_for_the_job_user(tmp_path: Path) -> None:
    """A file only root may execute is refused for nobody, found for root."""
    script = _script(tmp_path / "owner-only", 0o700)
    with pytest.raises(StartFailedError, match="not executable by the job user nobody"):
        spawn.resolve_program(str(script), path=None, cwd="/", user=NOBODY)
    assert spawn.resolve_program(str(script), path=None, cwd="/", user=ROOT) == str(script)
    with pytest.raises(StartFailedError, match="permission denied"):
        spawn.resolve_program("owner-only", path=str(tmp_path), cwd="/", user=NOBODY)
    _script(tmp_path / "everyone", 0o755)
    assert spawn.resolve_program("everyone", path=str(tmp_path), cwd="/", user=NOBODY) == str(
        tmp_path / "everyone"
    )


def test_relative_paths_resolve_against_the_job_working_dir(tmp_path: Path) -> None:
    _script(tmp_path / "run.sh", 0o755)
    assert spawn.resolve_program("./run.sh", path=None, cwd=str(tmp_path), user=NOBODY) == str(
        tmp_path / "run.sh"
    )


def test_files_hidden_by_the_sandbox_count_as_missing(tmp_path: Path) -> None:
    """The sandbox has a fresh /tmp and hides the data dir: what is there on the host is not inside."""
    script = _script(tmp_path / "x", 0o755)
    hidden = (PurePosixPath(tmp_path),)
    with pytest.raises(StartFailedError, match="no such file"):
        spawn.resolve_program(str(script), path=None, cwd="/", user=NOBODY, hidden=hidden)
    visible = (PurePosixPath(tmp_path),)
    assert spawn.resolve_program(
        str(script), path=None, cwd="/", user=NOBODY, hidden=hidden, visible=visible
    )


@pytest.mark.parametrize(
    ("returncode", "reported", "expected"),
    [
        (0, 0, (0, None)),
        (3, 3, (3, None)),
        (137, 137, (137, 9)),  # the command was SIGKILLed; bwrap reports 128+9
        (143, None, (143, 15)),
        (-9, None, (137, 9)),  # the outer bwrap itself was SIGKILLed: no report
        (1, 255, (255, None)),
    ],
)
def test_exit_status_is_decoded_like_a_shell(
    returncode: int, reported: int | None, expected: tuple[int, int | None]
) -> None:
    assert spawn.exit_status(returncode, reported) == expected


def test_spawn_argv_enters_cgroups_then_drops_privileges_then_sandboxes(tmp_path: Path) -> None:
    tools = bwrap.SandboxTools(sh="/bin/sh", setpriv="/usr/bin/setpriv", bwrap="/usr/bin/bwrap")
    procs = [tmp_path / "cpu" / "cgroup.procs", tmp_path / "memory" / "cgroup.procs"]
    argv = bwrap.spawn_argv(
        tools,
        NOBODY,
        procs_files=procs,
        data_dir=Path("/var/lib/jobworker"),
        workdir=Path("/var/lib/jobworker/jobs/x/work"),
        cwd="/var/lib/jobworker/jobs/x/work",
        argv=["echo", "hi"],
        status_fd=7,
        host_network=False,
    )
    assert argv[:3] == ["/bin/sh", "-c", bwrap.TRAMPOLINE]
    dashdash = argv.index("--")
    assert argv[4:dashdash] == [str(p) for p in procs]
    assert argv[dashdash + 1 : dashdash + 6] == [
        "/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
    ]  # fmt: skip
    bw = argv.index("/usr/bin/bwrap")
    options = argv[bw:]
    # Inside, the ready helper reports the finished sandbox, then execs the command.
    assert options[-7:] == [
        "--",
        "/bin/sh",
        "-c",
        bwrap.READY_HELPER,
        "jobworker-exec",
        "echo",
        "hi",
    ]
    for flag in ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]:
        assert flag in options
    assert "--share-net" not in options
    assert options[options.index("--json-status-fd") + 1] == "7"
    # The data dir is hidden before the job's own work dir is bound back inside it.
    assert options.index("--tmpfs") < options.index("--bind")
    assert options[options.index("--ro-bind") : options.index("--ro-bind") + 3] == [
        "--ro-bind",
        "/",
        "/",
    ]


def test_spawn_argv_for_root_and_host_network_skips_the_privilege_drop() -> None:
    tools = bwrap.SandboxTools(sh="/bin/sh", setpriv="/usr/bin/setpriv", bwrap="/usr/bin/bwrap")
    argv = bwrap.spawn_argv(
        tools, ROOT, procs_files=[], data_dir=Path("/d"), workdir=Path("/d/w"), cwd="/",
        argv=["id"], status_fd=5, host_network=True,
    )  # fmt: skip
    assert "/usr/bin/setpriv" not in argv
    assert "--unshare-user" not in argv
    assert "--share-net" in argv


def test_the_trampoline_enters_each_cgroup_then_execs(tmp_path: Path) -> None:
    """Run the real trampoline with plain files as cgroup.procs: each gets the shell's pid."""
    files = [tmp_path / "a", tmp_path / "b"]
    out = tmp_path / "out"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT)
            os.dup2(fd, 1)
            os.execv(
                "/bin/sh",
                [
                    "/bin/sh",
                    "-c",
                    bwrap.TRAMPOLINE,
                    "t",
                    *map(str, files),
                    "--",
                    "/bin/sh",
                    "-c",
                    "echo $$",
                ],
            )
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (
        files[0].read_text().strip()
        == files[1].read_text().strip()
        == out.read_text().strip()
        == str(pid)
    )
