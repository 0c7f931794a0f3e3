"""Program resolution and exit-status decoding, before and after a job runs."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

import pytest

from jobworker.errors import InvalidRequestError, StartFailedError
from jobworker.sandbox import bwrap, launch, process, program, status
from jobworker.sandbox.bwrap import JobUser

NOBODY = JobUser(name="nobody", uid=65534, gid=65534)
ROOT = JobUser(name="root", uid=0, gid=0)


def _script(path: Path, mode: int) -> Path:
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(mode)
    return path


def test_programs_are_found_in_path_like_execvp() -> None:
    assert program.resolve_program("sh", path=None, cwd="/", user=NOBODY) in {
        "/usr/bin/sh",
        "/bin/sh",
        "/usr/local/bin/sh",
    }
    assert program.resolve_program("/bin/sh", path=None, cwd="/", user=NOBODY) == "/bin/sh"


def test_a_missing_program_is_an_error_naming_it() -> None:
    with pytest.raises(
        StartFailedError, match=r"program 'no-such-program' not found in PATH \(/nowhere\)"
    ):
        program.resolve_program("no-such-program", path="/nowhere", cwd="/", user=NOBODY)
    with pytest.raises(StartFailedError, match="cannot run '/no/such': no such file"):
        program.resolve_program("/no/such", path=None, cwd="/", user=NOBODY)


def test_a_directory_is_not_a_program() -> None:
    with pytest.raises(StartFailedError, match="is a directory"):
        program.resolve_program("/etc", path=None, cwd="/", user=NOBODY)


def test_execute_permission_is_judged_for_the_job_user(tmp_path: Path) -> None:
    """A file only root may execute is refused for nobody, found for root."""
    script = _script(tmp_path / "owner-only", 0o700)
    with pytest.raises(StartFailedError, match="not executable by the job user nobody"):
        program.resolve_program(str(script), path=None, cwd="/", user=NOBODY)
    assert program.resolve_program(str(script), path=None, cwd="/", user=ROOT) == str(script)
    with pytest.raises(StartFailedError, match="permission denied"):
        program.resolve_program("owner-only", path=str(tmp_path), cwd="/", user=NOBODY)
    _script(tmp_path / "everyone", 0o755)
    assert program.resolve_program("everyone", path=str(tmp_path), cwd="/", user=NOBODY) == str(
        tmp_path / "everyone"
    )


def test_relative_paths_resolve_against_the_job_working_dir(tmp_path: Path) -> None:
    _script(tmp_path / "run.sh", 0o755)
    assert program.resolve_program("./run.sh", path=None, cwd=str(tmp_path), user=NOBODY) == str(
        tmp_path / "run.sh"
    )


def test_files_hidden_by_the_sandbox_count_as_missing(tmp_path: Path) -> None:
    """The sandbox has a fresh /tmp and hides the data dir: what is there on the host is not inside."""
    script = _script(tmp_path / "x", 0o755)
    hidden = (PurePosixPath(tmp_path),)
    with pytest.raises(StartFailedError, match="no such file"):
        program.resolve_program(str(script), path=None, cwd="/", user=NOBODY, hidden=hidden)
    visible = (PurePosixPath(tmp_path),)
    assert program.resolve_program(
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
    assert status.exit_status(returncode, reported) == expected


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
        args_fd=8,
        host_network=False,
        tmpfs_size=64 << 20,
        workdir_size=16 << 20,
        view=("--ro-bind", "/usr", "/usr"),
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
    flags = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--new-session",
    ]
    for flag in flags:
        assert flag in options
    assert "--share-net" not in options
    # A job outlives jwsd (a restart takes it over): nothing ties it to jwsd's life.
    assert "--die-with-parent" not in options
    assert options[options.index("--json-status-fd") + 1] == "7"
    # The job's environment comes from the args fd, read by bubblewrap alone.
    assert options[1:3] == ["--args", "8"]
    # The job's view of the host (hostview) comes first, on bubblewrap's empty root.
    assert options[options.index("--ro-bind") : options.index("--ro-bind") + 4] == [
        "--ro-bind",
        "/usr",
        "/usr",
        "--proc",
    ]
    mounts = _mounts(options)
    # Writable tmpfs are size-limited; /dev and the data dir are read-only; the
    # data dir is hidden before the job's own work dir, a tmpfs of its own, is
    # mounted in it; the root is made read-only last (non-recursive).
    assert mounts == [
        ("--proc", "/proc", None),
        ("--dev", "/dev", None),
        ("--tmpfs", "/dev/shm", 64 << 20),
        ("--remount-ro", "/dev", None),
        ("--tmpfs", "/tmp", 64 << 20),
        ("--tmpfs", "/var/lib/jobworker", None),
        ("--tmpfs", "/var/lib/jobworker/jobs/x/work", 16 << 20),
        ("--remount-ro", "/var/lib/jobworker", None),
        ("--remount-ro", "/", None),
    ]
    work = options.index("/var/lib/jobworker/jobs/x/work")
    assert options[work - 5 : work] == ["--perms", "0700", "--size", str(16 << 20), "--tmpfs"]


def _mounts(options: list[str]) -> list[tuple[str, str, int | None]]:
    """(option, target, --size) of each mount option in a bubblewrap command line."""
    found = []
    size = None
    i = 0
    while i < len(options) and options[i] != "--":
        option = options[i]
        if option == "--size":
            size = int(options[i + 1])
            i += 2
            continue
        if option in ("--proc", "--dev", "--tmpfs", "--remount-ro"):
            found.append((option, options[i + 1], size))
            size = None
            i += 2
            continue
        if option == "--bind":
            found.append((option, options[i + 2], None))
            i += 3
            continue
        i += 1
    return found


def test_spawn_argv_for_root_and_host_network_skips_the_privilege_drop() -> None:
    tools = bwrap.SandboxTools(sh="/bin/sh", setpriv="/usr/bin/setpriv", bwrap="/usr/bin/bwrap")
    argv = bwrap.spawn_argv(
        tools, ROOT, procs_files=[], data_dir=Path("/d"), workdir=Path("/d/w"), cwd="/",
        argv=["id"], status_fd=5, args_fd=6, host_network=True, tmpfs_size=None,
        workdir_size=None, view=(),
    )  # fmt: skip
    assert "/usr/bin/setpriv" not in argv
    assert "--unshare-user" not in argv
    assert "--disable-userns" not in argv  # it needs a user namespace of bubblewrap's own
    assert "--share-net" in argv
    assert "--size" not in argv
    assert argv[argv.index("--bind") : argv.index("--bind") + 3] == ["--bind", "/d/w", "/d/w"]


def test_spawn_argv_drops_to_the_owners_host_uid_and_maps_the_job_user_inside() -> None:
    """setpriv takes the job to its owner's host ids; bubblewrap's user namespace shows
    it as the job user (nobody), as before jobs had host uids of their own."""
    tools = bwrap.SandboxTools(sh="/bin/sh", setpriv="/usr/bin/setpriv", bwrap="/usr/bin/bwrap")
    argv = bwrap.spawn_argv(
        tools, NOBODY.on_host(1879048200), procs_files=[], data_dir=Path("/d"),
        workdir=Path("/d/w"), cwd="/", argv=["id"], status_fd=5, args_fd=6,
        host_network=False, tmpfs_size=None, workdir_size=None, view=(),
    )  # fmt: skip
    setpriv = argv.index("/usr/bin/setpriv")
    assert argv[setpriv : setpriv + 4] == [
        "/usr/bin/setpriv", "--reuid=1879048200", "--regid=1879048200", "--clear-groups",
    ]  # fmt: skip
    user = argv.index("--uid")
    assert argv[user : user + 4] == ["--uid", "65534", "--gid", "65534"]


def test_env_options_carry_the_job_environment_for_bubblewrap_alone() -> None:
    """NUL-separated for --args: values with spaces, newlines, '=' or nothing stay whole."""
    env = {"A": "1", "LD_PRELOAD": "/x.so", "SPACED": "a b\nc", "EQ": "k=v", "EMPTY": ""}
    options = bwrap.env_options(env).split(b"\0")
    assert options[-1] == b""  # every option ends with its NUL
    assert options[:-1] == [
        b"--clearenv",
        b"--setenv", b"A", b"1",
        b"--setenv", b"LD_PRELOAD", b"/x.so",
        b"--setenv", b"SPACED", b"a b\nc",
        b"--setenv", b"EQ", b"k=v",
        b"--setenv", b"EMPTY", b"",
    ]  # fmt: skip


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


# ---- the lookup judges every step as the job user ------------------------------


def test_a_dir_the_job_user_cannot_search_hides_what_is_in_it(tmp_path: Path) -> None:
    """A file in a root-only dir and a missing one get the same answer for nobody:
    the lookup (run by root) tells the job user nothing it could not learn itself."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    _script(private / "run.sh", 0o755)
    answers = set()
    for name in ["run.sh", "missing"]:
        with pytest.raises(StartFailedError) as caught:
            program.resolve_program(str(private / name), path=None, cwd="/", user=NOBODY)
        answers.add(str(caught.value).replace(name, "NAME"))
    assert len(answers) == 1
    assert "permission denied" in answers.pop()
    # In PATH too; root passes.
    with pytest.raises(StartFailedError, match="permission denied"):
        program.resolve_program("run.sh", path=str(private), cwd="/", user=NOBODY)
    assert program.resolve_program("run.sh", path=str(private), cwd="/", user=ROOT) == str(
        private / "run.sh"
    )


def test_search_permission_is_judged_by_owner_then_group_then_others(tmp_path: Path) -> None:
    """A dir owned by nobody with only the owner's x bit lets nobody through; one
    owned by root with only the group's x bit does not (nobody is not in group root)."""
    own = tmp_path / "own"
    own.mkdir()
    os.chown(own, NOBODY.uid, NOBODY.gid)
    own.chmod(0o100)
    _script(own / "x", 0o755)
    assert program.resolve_program(str(own / "x"), path=None, cwd="/", user=NOBODY) == str(
        own / "x"
    )
    group_only = tmp_path / "group-only"
    group_only.mkdir()
    group_only.chmod(0o010)
    _script(group_only / "x", 0o755)
    with pytest.raises(StartFailedError, match="permission denied"):
        program.resolve_program(str(group_only / "x"), path=None, cwd="/", user=NOBODY)


def test_permissions_are_judged_for_the_jobs_host_uid_not_the_job_user(tmp_path: Path) -> None:
    """A job runs on the host as its owner's uid, not as nobody: a dir only nobody may
    search is closed to it, one only its own host uid may search is open."""
    alex = NOBODY.on_host(1879048192)
    assert (alex.uid, alex.gid, alex.host_uid, alex.host_gid) == (
        65534,
        65534,
        1879048192,
        1879048192,
    )
    for name, owner in (("nobodys", NOBODY.uid), ("alexs", alex.host_uid)):
        directory = tmp_path / name
        directory.mkdir()
        os.chown(directory, owner, owner)
        directory.chmod(0o100)
        _script(directory / "x", 0o755)
    with pytest.raises(StartFailedError, match="permission denied"):
        program.resolve_program(str(tmp_path / "nobodys" / "x"), path=None, cwd="/", user=alex)
    found = program.resolve_program(str(tmp_path / "alexs" / "x"), path=None, cwd="/", user=alex)
    assert found == str(tmp_path / "alexs" / "x")
    assert ROOT.on_host(1879048192) == ROOT, "a root job user stays root on the host"


def test_symbolic_links_are_followed_as_the_kernel_would(tmp_path: Path) -> None:
    target = _script(tmp_path / "real", 0o755)
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "abs").symlink_to(target)
    (tmp_path / "dir-link").symlink_to(tmp_path)
    # "dir-link/.." is the parent of the link's target, not tmp_path (no lexical "..").
    for name in ["link", "abs", "dir-link/real", f"dir-link/../{tmp_path.name}/link"]:
        program.resolve_program(str(tmp_path / name), path=None, cwd="/", user=NOBODY)
    assert target.exists()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(StartFailedError, match="too many levels of symbolic links"):
        program.resolve_program(str(tmp_path / "loop"), path=None, cwd="/", user=NOBODY)
    (tmp_path / "dangling").symlink_to("nowhere")
    with pytest.raises(StartFailedError, match="no such file"):
        program.resolve_program(str(tmp_path / "dangling"), path=None, cwd="/", user=NOBODY)
    with pytest.raises(StartFailedError, match="not a directory"):
        program.resolve_program(str(tmp_path / "real" / "x"), path=None, cwd="/", user=NOBODY)


def test_a_link_into_a_hidden_dir_is_missing_inside_the_sandbox(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    _script(hidden / "x", 0o755)
    (tmp_path / "link").symlink_to(hidden / "x")
    with pytest.raises(StartFailedError, match="no such file"):
        program.resolve_program(
            str(tmp_path / "link"),
            path=None,
            cwd="/",
            user=NOBODY,
            hidden=(PurePosixPath(hidden),),
        )


# ---- what the kernel will exec ---------------------------------------------------


def _env_of_size(total: int) -> dict[str, str]:
    """An environment whose exec strings and pointers take exactly `total` bytes."""
    env: dict[str, str] = {}
    remaining = total
    i = 0
    while remaining > 0:
        # One "Vnnnnn=value\0" string and its 8-byte pointer.
        key = f"V{i:05d}"
        room = min(remaining, 100_000) - len(key) - 2 - 8
        if room < 0:
            room = 0
        env[key] = "x" * room
        remaining -= len(key) + 2 + room + 8
        i += 1
    assert remaining == 0, remaining
    return env


def test_exec_size_is_checked_as_the_kernel_does() -> None:
    """What check_exec_size accepts, execve accepts; past the kernel's room, both refuse."""
    argv = ["/bin/true"]
    fixed = len(b"/bin/true") + 1 + 8
    fits = _env_of_size(program.exec_space() - program.ARG_SPACE_SLACK - fixed)
    program.check_exec_size(argv, fits)
    subprocess.run(argv, env=fits, check=True)
    too_big = _env_of_size(program.exec_space() + 1 - fixed + 8)
    with pytest.raises(InvalidRequestError, match="the command line and environment take"):
        program.check_exec_size(argv, too_big)
    with pytest.raises(OSError, match="Argument list too long"):
        subprocess.run(argv, env=too_big, check=True)


def test_one_string_over_the_kernel_bound_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="an environment variable .* is 131072 bytes"):
        program.check_exec_size(["true"], {"BIG": "x" * (program.MAX_ARG_STRLEN - 4)})
    with pytest.raises(InvalidRequestError, match="an argument"):
        program.check_exec_size(["echo", "x" * program.MAX_ARG_STRLEN], {})
    program.check_exec_size(["echo", "x" * (program.MAX_ARG_STRLEN - 1)], {})


# ---- the environment the helpers get --------------------------------------------


async def test_launch_gives_the_child_only_the_helper_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exact environment the trampoline is exec'd with is bwrap.HELPER_ENV:
    nothing of the request (that goes through the args fd) nor of the daemon's own."""
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/evil.so")
    monkeypatch.setenv("JOBWORKER_DAEMON_SECRET", "x")
    sandbox_args = bwrap.env_options({"LD_PRELOAD": "/evil.so", "PATH": "/evil"})

    def build_cmd(status_fd: int, args_fd: int) -> list[str]:
        script = (
            f"cat /proc/$$/environ; echo; echo ARGS; cat /dev/fd/{args_fd}; "
            f'echo "{{\\"child-pid\\": $$}}" > /dev/fd/{status_fd}; echo >&0; read -r _ <&0'
        )
        return ["/bin/sh", "-c", script]

    with tempfile.TemporaryDirectory() as files:
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        output_file = os.open(Path(files) / "output", flags, 0o600)
        status_file = os.open(Path(files) / "status", flags, 0o600)
        try:
            launched = await launch.launch(
                build_cmd,
                sandbox_args=sandbox_args,
                output_file=output_file,
                status_file=status_file,
            )
            assert isinstance(launched.process, process.ChildProcess)
            assert await launched.process.wait() == 0
            assert launched.copier is not None
            await launched.copier.wait()
            output = (Path(files) / "output").read_bytes()
        finally:
            os.close(output_file)
            os.close(status_file)
    environ, args = output.split(b"\nARGS\n")
    expected = {f"{k}={v}".encode() for k, v in bwrap.HELPER_ENV.items()}
    assert set(environ.rstrip(b"\0").split(b"\0")) == expected
    assert args == sandbox_args


def test_a_long_or_odd_program_name_is_echoed_short_and_escaped(tmp_path: Path) -> None:
    """The program and PATH come from the request: an error must not carry 128 KiB of them,
    nor a newline that would forge a log line."""
    with pytest.raises(StartFailedError) as caught:
        program.resolve_program(
            "x" * 100_000 + "\nforged", path="/nowhere:" + "y" * 100_000, cwd="/", user=NOBODY
        )
    message = str(caught.value)
    assert len(message) < 300 and "\n" not in message, message


def test_outside_the_allow_list_a_program_is_missing_and_the_deepest_rule_wins(
    tmp_path: Path,
) -> None:
    """Under "/" hidden, only the visible dirs show; a hidden dir inside one hides again."""
    (tmp_path / "shown" / "covered").mkdir(parents=True)
    for name in ["shown/x", "shown/covered/x", "other"]:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    rule = {
        "hidden": (PurePosixPath("/"), PurePosixPath(tmp_path / "shown" / "covered")),
        "visible": (PurePosixPath(tmp_path / "shown"),),
    }
    found = program.resolve_program(
        str(tmp_path / "shown/x"), path=None, cwd="/", user=ROOT, **rule
    )
    assert found == str(tmp_path / "shown/x")
    for name in ["shown/covered/x", "other"]:
        with pytest.raises(StartFailedError, match="no such file"):
            program.resolve_program(str(tmp_path / name), path=None, cwd="/", user=ROOT, **rule)
