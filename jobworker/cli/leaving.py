"""What `jws run` does when its user leaves before the job it started has ended.

The job is `jws run`'s own, as a command is ssh's: when the reader of its output goes
away (stdout closed: `jws run -- yes | head -c 100`) or Ctrl-C interrupts it, the job
is stopped as `jws stop` would (SIGTERM, the grace period, SIGKILL), one line on
stderr names it, and jws exits as a process killed by that signal would (141 for
SIGPIPE, 130 for SIGINT). A second Ctrl-C while the job is being stopped leaves at
once, saying that the job may still be running. With `--detach-on-interrupt`, Ctrl-C
leaves the job running (and says so, with its id).

Ctrl-C while the start itself is in flight must not orphan the job: jwsd may have
started it already, and only its answer says which job it is. So the start is let
finish (`start_interruptibly`), and a job it started is then stopped as above.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import attrs

from jobworker.cli.stdout import copy_output
from jobworker.errors import JobWorkerError

if TYPE_CHECKING:  # imported lazily at run time: `jws --help` stays quick
    from jobworker.client import JobWorkerClient, Reconnector

T = TypeVar("T")

EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


@attrs.frozen
class Left:
    """jws left before the job ended; exit with `code`."""

    code: int


async def start_interruptibly(
    start: Callable[[], Awaitable[T]], say: Callable[[str], None]
) -> tuple[T, bool]:
    """`await start()`, and whether Ctrl-C came meanwhile. A first Ctrl-C waits for
    the start's answer (the caller then stops the job it names); a second leaves at
    once (KeyboardInterrupt), saying that a job may have been started."""
    import trio

    interrupted = False
    leave_now = False
    results: list[T] = []
    failures: list[Exception] = []  # raised here as it is, not in an ExceptionGroup
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal interrupted, leave_now
                async for _ in interrupts:
                    if interrupted:
                        say(
                            "interrupted again: leaving now; the job may have been started "
                            "(`jws list` shows it)"
                        )
                        leave_now = True
                        nursery.cancel_scope.cancel()
                        return
                    interrupted = True
                    say("interrupted while the job is being started: waiting for its id")

            nursery.start_soon(watch)
            try:
                results.append(await start())
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery
                failures.append(exc)
            nursery.cancel_scope.cancel()
    if leave_now:
        raise KeyboardInterrupt  # jws exits 130, as for any Ctrl-C it does not handle
    if failures:
        raise failures[0]
    return results[0], interrupted


@attrs.frozen
class Following:
    """How to follow one job that `jws run` started.

    grace: the stop's grace period (None: the server's). detach: Ctrl-C leaves the job
    running. say: writes one line for a person to stderr."""

    client: JobWorkerClient
    reconnector: Reconnector
    job_id: str
    grace: float | None
    detach: bool
    say: Callable[[str], None]

    async def until_ended(self, fd: int, *, interrupted_already: bool = False) -> int | Left:
        """Write the job's output to `fd` until it ends (the offset reached), or until
        the user leaves (Left, once the job was stopped or left running).
        interrupted_already: Ctrl-C came during the start; act on it at once."""
        import trio

        results: list[int | Left] = []  # the first one decides
        failures: list[JobWorkerError] = []  # raised here, not as an ExceptionGroup
        stopping = False

        async def stop_job(line: str, code: int) -> None:
            nonlocal stopping
            stopping = True
            self.say(line)
            try:
                await self.reconnector.call(self._stop, self._held())
            except JobWorkerError as exc:
                self.say(f"could not stop job {self.job_id}: {exc}")
            results.append(Left(code))
            nursery.cancel_scope.cancel()

        with trio.open_signal_receiver(signal.SIGINT) as interrupts:
            async with trio.open_nursery() as nursery:
                following = trio.CancelScope()

                async def follow() -> None:
                    with following:
                        try:
                            results.append(
                                await copy_output(self.client, self.job_id, 0, fd, self.reconnector)
                            )
                        except JobWorkerError as exc:
                            failures.append(exc)
                        except BrokenPipeError:
                            nursery.start_soon(
                                stop_job,
                                f"stdout was closed: stopping job {self.job_id}",
                                EXIT_BROKEN_PIPE,
                            )
                            return
                        nursery.cancel_scope.cancel()

                def interrupted() -> None:
                    following.cancel()
                    if stopping:
                        self.say(
                            f"interrupted again: leaving now; job {self.job_id} may still be "
                            f"running (`jws stop -j {self.job_id}` stops it)"
                        )
                    elif self.detach:
                        self.say(
                            f"interrupted: job {self.job_id} keeps running "
                            f"(`jws stop -j {self.job_id}` stops it)"
                        )
                    else:
                        nursery.start_soon(
                            stop_job,
                            f"interrupted: stopping job {self.job_id} (Ctrl-C again to leave it running)",
                            EXIT_INTERRUPTED,
                        )
                        return
                    results.append(Left(EXIT_INTERRUPTED))
                    nursery.cancel_scope.cancel()

                if interrupted_already:  # during the start: never follow
                    following.cancel()
                    interrupted()
                else:
                    nursery.start_soon(follow)
                async for _ in interrupts:
                    interrupted()
        if failures and not results:
            raise failures[0]
        return results[0]

    def _held(self) -> JobWorkerClient | None:
        # After a reconnection the first connection is dead: the call opens a new one.
        return None if self.reconnector.reconnected else self.client

    async def _stop(self, connection: JobWorkerClient) -> None:
        await connection.stop(self.job_id, self.grace)


__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "Following", "Left", "start_interruptibly"]
