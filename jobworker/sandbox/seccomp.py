"""The seccomp filter every job runs under: the system calls no job needs, refused.

Bubblewrap installs it (`--seccomp FD`: a classic BPF program, the form
libseccomp's `seccomp_export_bpf` writes) just before it execs the ready helper,
after `NoNewPrivs`. It is a deny-list, as narrow as the reasons for it, on top of
what the sandbox already withholds (no capabilities, no new user namespaces):

* the kernel keyrings (`keyctl`, `add_key`, `request_key`): they are not
  namespaced, and every job runs as the same job user, so a key one user's job
  adds is a key another user's job reads;
* kernel attack surface no job needs, and the usual first step of a kernel
  exploit: `bpf`, `perf_event_open`, `userfaultfd`, and io_uring (whose
  operations no seccomp filter sees);
* `syslog` (the kernel's log, where other jobs' traces land) and
  `open_by_handle_at` (a file handle opens any file on a mount, past the
  sandbox's directories);
* what only a privileged process may do anyway, refused before the kernel's
  own check: loading kernels and modules, `reboot`, `swapon`/`swapoff`, `acct`.

Each is refused with EPERM, as Docker's default profile does, so a program sees
a plain "operation not permitted". System calls of another ABI (i386 programs
on x86-64 via `int 0x80`, x32) have other numbers and would get around the list:
they get ENOSYS, so 32-bit programs cannot run in a job.

The numbers are per architecture: x86-64 and arm64 here; on another, jobs run
without the filter and jwsd says so at start (`host.check_sandbox`).
"""

from __future__ import annotations

import errno
import platform
import struct

#: (x86-64 number, arm64 number) of each refused system call.
REFUSED: dict[str, tuple[int, int]] = {
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "syslog": (103, 116),
    "open_by_handle_at": (304, 265),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
}

#: `uname -m` → (AUDIT_ARCH_* the kernel reports for the native ABI, index in REFUSED).
_ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}

#: x32 system calls are x86-64 ones with this bit set.
_X32_SYSCALL_BIT = 0x40000000

# Classic BPF opcodes (linux/filter.h) and seccomp's return actions (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# Offsets in struct seccomp_data.
_NR = 0
_ARCH = 4


def program(machine: str | None = None) -> bytes | None:
    """The filter for `machine` (`platform.machine()` by default) as bubblewrap
    reads it: struct sock_filter entries, native byte order. None when there is
    no table for that architecture."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, column = arch
    numbers = sorted({pair[column] for pair in REFUSED.values()})
    deny = _RET_ERRNO | errno.EPERM
    foreign = _RET_ERRNO | errno.ENOSYS
    code: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, audit_arch),
        (_RET_K, 0, 0, foreign),
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if audit_arch == _ARCHES["x86_64"][0]:
        code += [(_JGE_K, 0, 1, _X32_SYSCALL_BIT), (_RET_K, 0, 0, foreign)]
    # Each match jumps over the rest of the list and the ALLOW, to the EPERM.
    for i, number in enumerate(numbers):
        code.append((_JEQ_K, len(numbers) - i, 0, number))
    code += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


__all__ = ["REFUSED", "program"]
