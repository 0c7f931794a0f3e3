"""Riding over a restart of jwsd: calls that connect again, with backoff, when jwsd goes away.

A job and its output outlive jwsd (an upgrade, a crash), and every byte of
output keeps its offset. So a client that follows a job need not fail when the
connection is lost: it connects again and asks from the byte it reached, and
sees every byte exactly once (`follow_output`).

`Reconnector.call` runs one call; when it ends with `UnavailableError`
(connection refused, reset, closed), it says so once, waits, connects again and
repeats the call, until `Backoff.total` seconds have passed since the loss; then
it raises `GaveUpReconnectingError` saying so. Only calls that are safe to repeat go through it:
reading status and output, never starting a job (a start whose answer was lost
may have started the job).

    reconnector = Reconnector(lambda timeout: connect(addr, credentials, connect_timeout=timeout),
                              Backoff(total=300), announce=print)
    offset = await follow_output(reconnector, job_id, 0, write)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import attrs
import trio

from jobworker.client.connection import JobWorkerClient
from jobworker.errors import GaveUpReconnectingError, JobNotFoundError, UnavailableError

T = TypeVar("T")

#: Opens a connection to jwsd; its argument is how many seconds connecting may take.
Connect = Callable[[float], AbstractAsyncContextManager[JobWorkerClient]]

#: Seconds one connection attempt may take at most (it takes less near the bound).
CONNECT_TIMEOUT = 10.0


@attrs.frozen
class Backoff:
    """When to try again after the connection to jwsd was lost.

    total: seconds from the loss until giving up; 0: never try again (fail at once).
    first: the first delay's ceiling; each next ceiling doubles, up to `cap`.
    """

    total: float = 300.0
    first: float = 0.1
    cap: float = 5.0

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The delays before each attempt, without end: each drawn at random from the
        upper half of its ceiling, so that the clients of one jwsd do not all come back
        at the same instant, and none waits much less than the ceiling says."""
        ceiling = self.first
        while True:
            yield rng.uniform(ceiling / 2, ceiling)
            ceiling = min(ceiling * 2, self.cap)


@attrs.define
class Reconnector:
    """Runs calls against jwsd, connecting again when the connection is lost.

    connect: opens a new connection (see `Connect`).
    backoff: when to try again, and for how long.
    announce: told once per loss, with a line for a person: the client reconnects.
    """

    connect: Connect
    backoff: Backoff
    announce: Callable[[str], None]
    rng: random.Random = attrs.field(factory=random.Random)
    #: A call was repeated on a new connection since this reconnector was made.
    reconnected: bool = attrs.field(default=False, init=False)
    # trio time the connection was lost, while a loss is being ridden over.
    _lost_at: float | None = attrs.field(default=None, init=False)
    _delays: Iterator[float] = attrs.field(factory=lambda: iter(()), init=False)

    def progressed(self) -> None:
        """The call got an answer: a later loss is a new one, with the whole bound again.
        (A jwsd that accepts connections and drops them at once is no progress.)"""
        self._lost_at = None

    async def call(
        self, fn: Callable[[JobWorkerClient], Awaitable[T]], client: JobWorkerClient | None = None
    ) -> T:
        """`fn(client)`, with `client` first if given (a connection the caller holds),
        then on new connections while the connection is lost, until the bound.

        `fn` must be safe to repeat. Raises what `fn` raises; for a loss, past the
        bound, `GaveUpReconnectingError` saying why."""
        while True:
            try:
                if client is not None:
                    held, client = client, None
                    result = await fn(held)
                else:
                    async with self.connect(self._connect_timeout()) as fresh:
                        result = await fn(fresh)
            except UnavailableError as exc:
                if self.backoff.total <= 0:
                    raise
                await self._wait(exc)
                self.reconnected = True
                continue
            self.progressed()
            return result

    def _connect_timeout(self) -> float:
        if self._lost_at is None:
            return CONNECT_TIMEOUT
        remaining = self._lost_at + self.backoff.total - trio.current_time()
        return max(min(CONNECT_TIMEOUT, remaining), 0.1)

    async def _wait(self, exc: UnavailableError) -> None:
        """Sleep before the next attempt after `exc`; raise when the bound has passed."""
        now = trio.current_time()
        if self._lost_at is None:
            self._lost_at = now
            self._delays = self.backoff.delays(self.rng)
            self.announce(
                f"{exc}; reconnecting (for up to {self.backoff.total:g} s, see --reconnect-timeout)"
            )
        deadline = self._lost_at + self.backoff.total
        if now >= deadline:
            raise GaveUpReconnectingError(
                f"gave up reconnecting to jwsd after {self.backoff.total:g} s: {exc}"
            ) from None
        # The last attempt is made at the deadline itself: the bound is waited out.
        await trio.sleep(min(next(self._delays), deadline - now))


async def follow_output(
    reconnector: Reconnector,
    job_id: str,
    offset: int,
    write: Callable[[bytes], Awaitable[None]],
    client: JobWorkerClient | None = None,
) -> int:
    """Hand the job's output from byte `offset` on to `await write(chunk)` until the
    job has terminated and every byte arrived; across losses of the connection, each
    byte once and in order (each attempt asks from the byte the last one reached).

    client: a connection to use first (else one is opened). Returns the offset reached.
    Raises as `Reconnector.call`; `JobNotFoundError` after a reconnection says the job is gone."""
    reached = offset

    async def from_reached(connection: JobWorkerClient) -> None:
        nonlocal reached
        try:
            async with contextlib.aclosing(connection.output(job_id, reached)) as chunks:
                async for chunk in chunks:
                    await write(chunk)
                    reached += len(chunk)
                    reconnector.progressed()
        except JobNotFoundError:
            if reconnector.reconnected:
                raise JobNotFoundError.reported(
                    f"job {job_id} is gone: jwsd came back without it "
                    "(its record was lost or removed)"
                ) from None
            raise

    await reconnector.call(from_reached, client)
    return reached
