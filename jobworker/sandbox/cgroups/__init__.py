"""Job cgroups, v1 and v2 behind one interface.

`detect()` picks the host's `CgroupDriver` once at start-up; the driver's
`create()` makes a `JobCgroup` per job with its limits written. The job's
trampoline writes its pid into each of `JobCgroup.procs_files`; `kill_all()`,
`usage()` and `remove()` end its life. `block_device_of()` gives the disk the
IO limits apply to. Control files are written inline: see `base`. `keep_tree()`
is the daemon's task that rebuilds a tree removed under it.
"""

from __future__ import annotations

from jobworker.sandbox.cgroups.base import CgroupDriver, JobCgroup, keep_tree
from jobworker.sandbox.cgroups.blockdev import block_device_of
from jobworker.sandbox.cgroups.detect import DRIVERS, detect, pick
from jobworker.sandbox.cgroups.v1 import V1Driver, V1JobCgroup
from jobworker.sandbox.cgroups.v2 import V2Driver, V2JobCgroup

__all__ = [
    "DRIVERS",
    "CgroupDriver",
    "JobCgroup",
    "V1Driver",
    "V1JobCgroup",
    "V2Driver",
    "V2JobCgroup",
    "block_device_of",
    "detect",
    "pick",
    "keep_tree",
]
