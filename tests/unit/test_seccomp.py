"""The seccomp program's shape; what it refuses is tested on the kernel
(tests/integration/test_tracker.py, the system calls no job needs)."""

from __future__ import annotations

import struct

from jobworker.sandbox import seccomp


def instructions(machine: str) -> list[tuple[int, int, int, int]]:
    program = seccomp.program(machine)
    assert program is not None
    return [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]


def test_an_architecture_without_a_table_gets_no_filter() -> None:
    assert seccomp.program("riscv64") is None


def test_every_refused_call_jumps_to_eperm_and_the_rest_are_allowed() -> None:
    for machine in ("x86_64", "aarch64"):
        code = instructions(machine)
        allow, deny = code[-2], code[-1]
        assert allow == (0x06, 0, 0, 0x7FFF0000)
        assert deny == (0x06, 0, 0, 0x00050000 | 1)  # SECCOMP_RET_ERRNO | EPERM
        checks = [(i, k, jt) for i, (op, jt, _, k) in enumerate(code) if op == 0x15][1:]
        column = 0 if machine == "x86_64" else 1
        assert sorted(k for _, k, _ in checks) == sorted(
            {pair[column] for pair in seccomp.REFUSED.values()}
        )
        for i, _, jt in checks:
            assert i + 1 + jt == len(code) - 1  # lands on the EPERM


def test_other_abis_are_refused_on_x86_64() -> None:
    code = instructions("x86_64")
    assert code[1] == (0x15, 1, 0, 0xC000003E)  # the native ABI only ...
    assert code[2] == (0x06, 0, 0, 0x00050000 | 38)  # ... else ENOSYS
    assert code[4] == (0x35, 0, 1, 0x40000000)  # x32 numbers: ENOSYS too
