"""What `jws start` and `jws run` are asked to run: their options, read and checked
into one `JobRequest` before anything is sent."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncclick as click
import attrs

from jobworker import limits as limits_table
from jobworker.cli.failure import EXIT_USAGE, Failure
from jobworker.cmdline import split_command
from jobworker.errors import InvalidRequestError
from jobworker.limits import Limits
from jobworker.model import NETWORK_MODES, JobStatus
from jobworker.naming import check_name, labels_from, parse_label

if TYPE_CHECKING:
    from jobworker.client import JobWorkerClient


@attrs.frozen
class JobRequest:
    """What `start` and `run` were asked to run, read and checked from the command
    line before anything is sent (see `from_options`)."""

    command_line: str
    argv: tuple[str, ...]
    limits: Limits
    env: dict[str, str]
    workdir: str
    network: str
    name: str = ""
    labels: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_options(
        cls,
        *,
        command_line: str | None,
        argv: tuple[str, ...],
        limit_texts: dict[str, str | None],
        env: tuple[str, ...],
        workdir: str,
        network: str | None,
        name: str | None = None,
        labels: tuple[str, ...] = (),
    ) -> JobRequest:
        """The request the options give. limit_texts: each limit's text by its field
        (None: not given). Raises Failure (usage) for what no server would accept."""
        if bool(command_line) == bool(argv):
            raise Failure(
                'give the command either with -c "COMMAND LINE" or after --, not both', EXIT_USAGE
            )
        if command_line:
            try:  # jwsd splits it again; a line it would refuse is the caller's mistake
                split_command(command_line)
            except InvalidRequestError as exc:
                raise Failure(f"-c: {exc}", EXIT_USAGE) from None
        return cls(
            command_line=command_line or "",
            argv=argv,
            limits=_limits_from(limit_texts),
            env=_environment_from(env),
            workdir=workdir,
            network=network or "",
            name=_name_from(name),
            labels=labels_option(labels),
        )

    async def start(self, client: JobWorkerClient) -> JobStatus:
        """Start the job through `client`; its status once running."""
        return await client.start(
            cmd=self.command_line,
            args=self.argv,
            limits=self.limits,
            env=self.env,
            workdir=self.workdir,
            network=self.network,
            name=self.name,
            labels=self.labels,
        )


def _limits_from(texts: dict[str, str | None]) -> Limits:
    """The limits given by their texts ("256M" by field; None: the server's default)."""
    try:
        return Limits.of(
            {
                kind: kind.unit.parse(text)
                for kind in limits_table.KINDS
                if (text := texts.get(kind.field)) is not None
            }
        )
    except (ValueError, InvalidRequestError) as exc:
        raise Failure(str(exc), EXIT_USAGE) from None


def _name_from(name: str | None) -> str:
    """`--name`, checked as jwsd will check it ("": none given)."""
    if name is None:
        return ""
    try:
        return check_name(name)
    except InvalidRequestError as exc:
        raise Failure(f"--name: {exc}", EXIT_USAGE) from None


def labels_option(items: tuple[str, ...]) -> dict[str, str]:
    """`--label KEY=VALUE` (repeatable), checked as jwsd will check them."""
    try:
        return dict(labels_from([parse_label(item) for item in items]))
    except InvalidRequestError as exc:
        raise Failure(f"--label: {exc}", EXIT_USAGE) from None


def label_flag(help_text: str) -> Callable[..., Any]:
    """`--label KEY=VALUE`, repeatable, handed on as the argument `labels`."""
    # No `-l`: `jws start ls -l` must still say that arguments go after `--`.
    return click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help=help_text)


def _environment_from(items: tuple[str, ...]) -> dict[str, str]:
    """What `-e` adds to the job's default environment: NAME=VALUE, or NAME for the
    caller's own value (skipped when the caller has none, as `docker run -e` does)."""
    environment = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise Failure(f"--env wants NAME=VALUE or NAME, not {item!r}", EXIT_USAGE)
        if sep:
            environment[key] = value
        elif key in os.environ:
            environment[key] = os.environ[key]
    return environment


def _limit_option(kind: limits_table.LimitKind) -> Callable[..., Any]:
    """`--KEY TEXT` for one limit of the table, passed on as the argument `kind.field`."""
    return click.option(f"--{kind.key}", kind.field, metavar=kind.unit.metavar, help=kind.help)


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `start` and `run` (what to run and within which limits), handed
    to the command as one `job: JobRequest` argument, checked before it runs."""
    names = ["command_line", "argv", "env", "workdir", "network", "name", "labels"]

    @functools.wraps(fn)
    async def command(**kwargs: Any) -> Any:
        limit_texts = {kind.field: kwargs.pop(kind.field) for kind in limits_table.KINDS}
        job = JobRequest.from_options(
            limit_texts=limit_texts, **{name: kwargs.pop(name) for name in names}
        )
        return await fn(job=job, **kwargs)

    for decorator in reversed(
        [
            click.option(
                "-c",
                "--cmd",
                "command_line",
                help='The command line, split like a shell would (no shell runs it): -c "ls -l".',
            ),
            *[_limit_option(kind) for kind in limits_table.KINDS],
            click.option(
                "-e",
                "--env",
                "env",
                multiple=True,
                help="NAME=VALUE added to the job's default environment, or NAME for "
                "your own value of it (repeatable).",
            ),
            click.option(
                "-w",
                "--workdir",
                default="",
                help="Working directory inside the sandbox (default: the job's own).",
            ),
            click.option(
                "--network",
                type=click.Choice(NETWORK_MODES),
                default=None,
                help="outbound: outbound access in the job's own network namespace; none: "
                "loopback only; host: the host's network (if jwsd allows it). "
                "Default: the server's (jwsd --network-default).",
            ),
            click.option(
                "--name",
                help="The job's name, unique among your jobs (1 to 63 letters, digits, '_', "
                "'.', '-'); other commands take it where they take an id.",
            ),
            label_flag(
                "A label KEY=VALUE (repeatable, at most 32; keys as Kubernetes labels, "
                "e.g. team=infra, example.com/tier=web); `jws list --label` selects by them."
            ),
            click.argument("argv", nargs=-1, type=click.UNPROCESSED),
        ]
    ):
        command = decorator(command)
    return command
