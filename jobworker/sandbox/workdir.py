"""A job's work dir as a size-limited tmpfs that exists only inside its sandbox.

Why a tmpfs: it is enforced on every host and every file system the data dir may
be on (ext4/XFS project quotas exist only where the operator enabled them), a
job that fills it gets ENOSPC in its own work dir and never touches the data
dir's disk (other jobs' output files live there), and its pages are charged
to the memory cgroup of the process that writes them: the job's. So work-dir
bytes count against the job's memory limit, and are gone when the job ends.

Why inside the sandbox: bubblewrap mounts it (`--size N --tmpfs PATH`, see
`bwrap.spawn_argv`) in the job's own mount namespace, so it is in no other mount
table. A tmpfs the daemon mounted on the host would be copied into every sandbox
built while it exists (bubblewrap binds the host's `/` with every mount below it):
each copy keeps a finished job's tmpfs and its pages alive for as long as that
other sandbox lives, and a host mount or unmount in the middle of a sandbox's
build fails it (docs/platform.md). It also needs no privilege of the daemon's
(bubblewrap mounts as the job user, in its user namespace).

The daemon reads the work dir's usage through a descriptor it opens in the
sandbox (`/proc/PID/root/...`) before the command runs; the descriptor keeps the
tmpfs alive after the sandbox is gone, so the last reading is exact, and closing
it frees the pages.
"""

from __future__ import annotations

import os
from pathlib import Path


def open_in_sandbox(init_pid: int, path: Path) -> int:
    """A descriptor of the work dir `path` as the sandbox whose init has host pid
    `init_pid` sees it. Raises OSError when the sandbox is gone."""
    # Every directory on the way is the sandbox's read-only tmpfs or the host's
    # read-only root: the job cannot swap one for a link; O_NOFOLLOW covers the last.
    return os.open(
        f"/proc/{init_pid}/root{path}",
        os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
    )


def used_bytes(fd: int) -> int:
    """Bytes in use on the work dir's tmpfs (`fd` from `open_in_sandbox`)."""
    st = os.fstatvfs(fd)  # cannot fail: the descriptor keeps the file system
    return (st.f_blocks - st.f_bfree) * st.f_frsize


__all__ = ["open_in_sandbox", "used_bytes"]
