"""`RecordQuota`: the bytes of job records each owner holds in the store, and the
bound on them (`jwsd --max-record-bytes-per-user`).

A record keeps what the user sent that is not bounded by the server's own
vocabulary: the argv (up to 1 MiB per job), the environment's names, the
working directory, the name and the labels (`record_bytes`). Counted per owner over every job the tracker
holds, running and kept, so that `jobs.db` is bounded by users × this bound
whatever they start, and a user near it is told what to remove rather than the
store growing until the disk is full.

The tracker charges a job at start (which raises QuotaExceededError when the job
would not fit), counts records restored from an earlier run without a check (they
are already on disk), and releases a job when it forgets it. Cheap and inline:
counters only.
"""

from __future__ import annotations

import collections

import attrs

from jobworker.errors import QuotaExceededError
from jobworker.jobs.record import JobRecord
from jobworker.model import JobSpec
from jobworker.naming import Labels
from jobworker.units import format_size

#: Bytes of a record that no user controls (ids, state, times, limits, pids), a
#: generous bound of the JSON the store writes around the user's part.
RECORD_OVERHEAD = 1024


def record_bytes(
    argv: tuple[str, ...],
    env_keys: tuple[str, ...] = (),
    workdir: str = "",
    name: str = "",
    labels: Labels = (),
) -> int:
    """The bytes of a job's record that its owner chose (UTF-8), plus the fixed overhead.
    (Names and labels are ASCII: `jobworker.naming`.)"""
    chosen = sum(len(arg.encode(errors="surrogatepass")) for arg in argv)
    chosen += sum(len(key.encode(errors="surrogatepass")) for key in env_keys)
    chosen += len(name) + sum(len(key) + len(value) for key, value in labels)
    return RECORD_OVERHEAD + chosen + len(workdir.encode(errors="surrogatepass"))


def spec_record_bytes(spec: JobSpec) -> int:
    """`record_bytes` of the record a job started from `spec` will have."""
    return record_bytes(
        spec.argv, tuple(spec.env or ()), spec.workdir or "", spec.name or "", spec.labels
    )


def record_size(record: JobRecord) -> int:
    """`record_bytes` of a stored record."""
    return record_bytes(
        record.argv, record.env_keys, record.workdir or "", record.name or "", record.labels
    )


@attrs.define(eq=False)
class RecordQuota:
    """Record bytes per owner. limit: the most one owner may hold; `None`: no bound."""

    limit: int | None
    _held: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _charges: dict[str, tuple[str, int]] = attrs.field(init=False, factory=dict)

    def held(self, owner: str) -> int:
        """The record bytes `owner`'s jobs hold now."""
        return self._held[owner]

    def charge(self, owner: str, job_id: str, size: int) -> None:
        """Count a new job's record; QuotaExceededError (and nothing counted) when the
        owner would hold more than the limit."""
        held = self._held[owner]
        if self.limit is not None and held + size > self.limit:
            raise QuotaExceededError(
                f"your jobs' records hold {format_size(held)} and this job's would add "
                f"{format_size(size)}, over this server's {format_size(self.limit)} per user; "
                "remove finished jobs you no longer need (jws rm), or start it with a shorter "
                "command"
            )
        self.restore(owner, job_id, size)

    def restore(self, owner: str, job_id: str, size: int) -> None:
        """Count a record already in the store (from an earlier run): no check."""
        self.release(job_id)
        self._charges[job_id] = (owner, size)
        self._held[owner] += size

    def release(self, job_id: str) -> None:
        """Stop counting a job's record (a job never charged: nothing happens)."""
        charge = self._charges.pop(job_id, None)
        if charge is None:
            return
        owner, size = charge
        self._held[owner] -= size
        if self._held[owner] <= 0:
            del self._held[owner]


__all__ = ["RECORD_OVERHEAD", "RecordQuota", "record_bytes", "record_size", "spec_record_bytes"]
