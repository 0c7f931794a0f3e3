"""Runs one outbound job on a host whose resolv.conf names a loopback resolver, as
systemd-resolved's 127.0.0.53 is: `python -m tests.integration._loopback_resolver_job
DATA_DIR`, run by the test in a private mount namespace whose /etc/resolv.conf says
`nameserver 127.0.0.53`, with the test's resolver listening there. Prints the job's
/etc/resolv.conf and what its TCP echo to the remote host's name answered."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from jobworker.model import JobSpec, NetworkMode
from tests.support.remote_host import ECHO_PORT, REMOTE_NAME
from tests.support.tracking import run_to_end, running_tracker

JOB = f"""
import socket
print(open("/etc/resolv.conf").read().strip())
s = socket.create_connection(({REMOTE_NAME!r}, {ECHO_PORT}), timeout=5)
s.sendall(b"by-name"); print(s.recv(100).decode())
"""


async def main(data_dir: Path) -> None:
    async with running_tracker(data_dir) as tracker:
        spec = JobSpec(argv=("python3", "-c", JOB), network=NetworkMode.OUTBOUND)
        out, _ = await run_to_end(tracker, spec)
    sys.stdout.write(out.decode(errors="replace"))


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
