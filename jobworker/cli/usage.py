"""How `jws` reads a command line, stricter than Click's defaults: an
option that takes one value given twice is a usage error (Click keeps the last one
silently: `jws stop -j A -j B` stopped only B), an unknown option of a command that
runs a program says that the program's arguments go after `--`, a usage error is one
line, and `--help`'s command list shows each summary whole (Click cuts it with "…")."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import asyncclick as click

from jobworker.cli.failure import EXIT_USAGE, Failure
from jobworker.cli.job_ids import complete_job_ids


class StrictCommand(click.Command):
    """A command whose single-value options may be given once (see the module)."""

    def make_parser(self, ctx: click.Context) -> Any:
        parser = super().make_parser(ctx)
        parse_args = parser.parse_args

        async def parse_once(args: list[str]) -> Any:
            try:
                opts, rest, order = await parse_args(args=args)
            except click.NoSuchOption as exc:
                if any(param.name == "argv" for param in self.params):
                    raise click.UsageError(
                        f"{exc.format_message()} The program's own arguments go after --: "
                        f"jws {ctx.info_name} [OPTIONS] -- PROGRAM ARGS...",
                        ctx,
                    ) from None
                raise
            seen: set[click.Parameter] = set()
            for param in order:
                if _takes_one_value(param) and param in seen:
                    name = max(param.opts, key=len)  # --job rather than -j
                    raise click.UsageError(
                        f"{name} was given more than once; it takes one value", ctx
                    )
                seen.add(param)
            return opts, rest, order

        parser.parse_args = parse_once  # type: ignore[method-assign]
        return parser

    def get_short_help_str(self, limit: int = 45) -> str:
        """The first sentence of the help, never cut short."""
        if self.short_help:
            return inspect.cleandoc(self.short_help)
        first = inspect.cleandoc(self.help or "").split("\n\n", 1)[0]
        return " ".join(first.split())


def _takes_one_value(param: click.Parameter) -> bool:
    return (
        isinstance(param, click.Option)
        and not param.multiple
        and not param.count
        and not param.is_flag
    )


class StrictGroup(click.Group):
    """A group whose commands are StrictCommands."""

    command_class = StrictCommand


def one_line(exc: click.ClickException) -> str:
    """The error `exc` in one line (Click prints a usage block and a hint before it),
    naming the command's `--help` when it was a usage error."""
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        return f"{message} (see `{exc.ctx.command_path} --help`)"
    return message


def job_ids_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ids of the commands that act on several jobs: `-j A -j B`, or `A B` after
    the options, handed to the command as one `job_ids: tuple[str, ...]` argument
    (each an id, a prefix of one or a name, as typed: `JobIds` resolves them)."""

    @functools.wraps(fn)
    async def command(*, job_options: tuple[str, ...], ids: tuple[str, ...], **kwargs: Any) -> Any:
        job_ids = tuple(dict.fromkeys((*job_options, *ids)))  # each once, in order
        if not job_ids:
            raise Failure(
                "no job id: give one or more, with -j ID or after the options", EXIT_USAGE
            )
        return await fn(job_ids=job_ids, **kwargs)

    command = click.option(
        "-j",
        "--job",
        "job_options",
        multiple=True,
        help="A job's id, id prefix or name (repeatable).",
        shell_complete=complete_job_ids,
    )(command)
    return click.argument("ids", nargs=-1, metavar="[ID]...", shell_complete=complete_job_ids)(
        command
    )


def job_id_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The id of a command that acts on one job: `-j ID` or `ID` after the options,
    handed to the command as `job_id: str` (an id, a prefix of one or a name)."""

    @functools.wraps(fn)
    async def command(*, job_option: str | None, id_argument: str | None, **kwargs: Any) -> Any:
        if (job_option is None) == (id_argument is None):
            raise Failure(
                "give one job id: with -j ID or after the options"
                if job_option is None
                else "one job id: with -j ID or after the options, not both",
                EXIT_USAGE,
            )
        return await fn(job_id=job_option or id_argument, **kwargs)

    command = click.option(
        "-j",
        "--job",
        "job_option",
        help="The job's id, id prefix or name.",
        shell_complete=complete_job_ids,
    )(command)
    return click.argument(
        "id_argument", metavar="[ID]", required=False, shell_complete=complete_job_ids
    )(command)


__all__ = ["StrictCommand", "StrictGroup", "job_id_option", "job_ids_options", "one_line"]
