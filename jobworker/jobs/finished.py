"""`FinishedJobs`: the finished jobs a tracker keeps, and the task that forgets them
when the retention policy (`jobworker.jobs.retention`) no longer keeps them.

The policy is pure; this is its wiring: which jobs have finished (with their output
on disk), per owner, on trio's clock; a job that finishes may push its owner's
oldest over the count kept (forgotten at once); the task sleeps until the oldest
reaches the age kept, or until a job finishes, and never polls. At its start it
applies the whole policy once, so that jobs restored after a restart are held to
it too (a crash loop must not keep more than the count per user).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from jobworker.jobs.retention import Finished, RetentionPolicy


@attrs.define(eq=False)
class FinishedJobs:
    """policy: what to keep. forget: the tracker's way to drop a job for good (its
    entry, record and files), called with the job's id; it calls `discard`."""

    policy: RetentionPolicy
    forget: Callable[[str], Awaitable[None]]
    # owner -> job id -> when it ended, on trio's clock; in the order they finished.
    _by_owner: dict[str, dict[str, float]] = attrs.field(init=False, factory=dict)
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)

    def restored(self, job_id: str, owner: str, ended: float) -> None:
        """Count a job that had finished before this tracker started (no forgetting yet:
        `run` applies the policy once it starts)."""
        self._by_owner.setdefault(owner, {})[job_id] = ended

    async def finished(self, job_id: str, owner: str, ended: float) -> None:
        """Count a job that has just finished, and forget its owner's oldest beyond the
        count the policy keeps."""
        owned = self._by_owner.setdefault(owner, {})
        owned[job_id] = ended
        self._changed.set()
        await self._forget(self.policy.to_forget(_as_finished(owner, owned), trio.current_time()))

    def discard(self, job_id: str, owner: str) -> None:
        """Stop counting a job (it is being forgotten, or was removed)."""
        owned = self._by_owner.get(owner, {})
        owned.pop(job_id, None)
        if not owned:
            self._by_owner.pop(owner, None)

    async def run(self) -> None:
        """Forget jobs as the policy says, for ever (cancel to stop): at once for those
        it does not keep now, then whenever the oldest expires or a job finishes."""
        while True:
            self._changed = trio.Event()
            await self._forget(self.policy.to_forget(self._every(), trio.current_time()))
            with trio.move_on_at(self.policy.next_expiry(self._every())):
                await self._changed.wait()

    def _every(self) -> list[Finished]:
        return [
            job for owner, owned in self._by_owner.items() for job in _as_finished(owner, owned)
        ]

    async def _forget(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            owner = next((o for o, owned in self._by_owner.items() if job_id in owned), None)
            if owner is None:
                continue  # a remove took it while we awaited
            self.discard(job_id, owner)
            await self.forget(job_id)
        await trio.lowlevel.checkpoint()


def _as_finished(owner: str, owned: dict[str, float]) -> list[Finished]:
    return [Finished(job_id, owner, ended) for job_id, ended in owned.items()]


__all__ = ["FinishedJobs"]
