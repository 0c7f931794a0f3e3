"""A job's work dir as a size-limited tmpfs, mounted by the daemon on the host.

Why a tmpfs: it is enforced on every host and every file system the data dir may
be on (ext4/XFS project quotas exist only where the operator enabled them), a
job that fills it gets ENOSPC in its own work dir and never touches the data
dir's disk (other jobs' spilled output lives there), and its pages are charged
to the memory cgroup of the process that writes them: the job's. So work-dir
bytes count against the job's memory limit, and are gone when the job ends.

The mount is nosuid and nodev, mode 0700, owned by the job user, with an inode
limit proportional to its size (one inode per 4 KiB, at least 1,024), so that
empty files cannot pin unaccounted memory either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(path: Path, size: int, uid: int, gid: int) -> None:
    """Mount a tmpfs of `size` bytes on the existing directory `path`, owned by
    uid:gid, mode 0700. Raises OSError when the kernel refuses."""
    inodes = max(1024, size // 4096)
    options = f"size={size},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}"
    if _libc.mount(
        b"jobworker-work",
        os.fsencode(path),
        b"tmpfs",
        _MS_NOSUID | _MS_NODEV,
        options.encode(),
    ):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


def unmount(path: Path) -> None:
    """Detach the tmpfs on `path` (lazily: a process still inside cannot keep it
    busy); a path with nothing mounted on it is fine."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH):
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, os.strerror(code), str(path))


def used_bytes(path: Path) -> int:
    """Bytes in use on the file system mounted on `path` (0 when it cannot be read)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def mounted_below(directory: Path) -> list[Path]:
    """Mount points strictly below `directory`, deepest first (left by a crash)."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            point = line.split()[4]
            point = point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            point = point.replace("\\134", "\\")
            if point.startswith(prefix):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


__all__ = ["mount", "mounted_below", "unmount", "used_bytes"]
