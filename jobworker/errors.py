"""The errors jobworker raises, one base class and a subclass per kind of failure.

Every error a caller can cause or observe is a `JobWorkerError`. The RPC layer
maps each subclass to one gRPC status code in exactly one place
(`jobworker.server.status`); nothing below the RPC boundary knows about gRPC.
Messages are written for a person: lower case, what went wrong and what to do.
"""

from __future__ import annotations


class JobWorkerError(Exception):
    """Base class of every error jobworker reports to its callers."""


class InvalidRequestError(JobWorkerError):
    """The request is malformed or asks for something impossible; nothing changed."""


class JobNotFoundError(JobWorkerError):
    """No job has this id (or the id is not a job id at all)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class AccessDeniedError(JobWorkerError):
    """The job exists but belongs to somebody else.

    The message is deliberately the seed's bare "access denied": it must not
    say whose job it is or anything else about it.
    """

    def __init__(self) -> None:
        super().__init__("access denied")


class UnauthenticatedError(JobWorkerError):
    """The caller presented no identity, or one the server's policy does not know."""


class StartFailedError(JobWorkerError):
    """The command could not be started (missing program, not executable, sandbox refused)."""


class BadStateError(JobWorkerError):
    """The operation is not possible in the job's or the service's current state."""


class ShuttingDownError(BadStateError):
    """The tracker is shutting down and accepts no new work."""

    def __init__(self) -> None:
        super().__init__("jobworker is shutting down; try again once it is back")


class SetupError(JobWorkerError):
    """The host cannot run jobs as configured: not root, no cgroups, no bubblewrap,
    a data dir that is not writable. Raised when the tracker starts."""
