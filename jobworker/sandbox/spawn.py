"""The names spawn.py had before it was split (`program`, `process`, `status`,
`launch`), until the tracker calls the facade."""

from jobworker.sandbox.launch import (
    SANDBOX_SETUP_TIMEOUT,
    Launched,
    copier_argv,
    launch,
    limit_copier,
)
from jobworker.sandbox.process import AttachedProcess, ChildProcess, Supervisor, start_time
from jobworker.sandbox.program import (
    ARG_SPACE_SLACK,
    DEFAULT_PATH,
    MAX_ARG_STRLEN,
    check_exec_size,
    exec_space,
    permits,
    resolve_program,
)
from jobworker.sandbox.status import exit_status, read_child_pid, read_exit_code

__all__ = [
    "ARG_SPACE_SLACK",
    "DEFAULT_PATH",
    "MAX_ARG_STRLEN",
    "SANDBOX_SETUP_TIMEOUT",
    "AttachedProcess",
    "ChildProcess",
    "Launched",
    "Supervisor",
    "check_exec_size",
    "copier_argv",
    "exec_space",
    "exit_status",
    "launch",
    "limit_copier",
    "permits",
    "read_child_pid",
    "read_exit_code",
    "resolve_program",
    "start_time",
]
