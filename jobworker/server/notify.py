"""sd_notify: tell the service manager (systemd `Type=notify`) where jwsd is in its life.

The protocol (sd_notify(3)) is one datagram of newline-separated `KEY=VALUE`
lines, sent to the unix datagram socket named by `$NOTIFY_SOCKET`: a path, or an
abstract socket name when it starts with '@'. jwsd sends `READY=1` once it
serves, `RELOADING=1` (with `MONOTONIC_USEC`, which systemd 253+ wants) when a
reload begins and `READY=1` again once it is over, and `STOPPING=1` when its
shutdown begins. Without `$NOTIFY_SOCKET` (not
run by a service manager that wants to hear) every call does nothing.

`Notifier.from_environment()` takes the variable out of the environment, so
nothing jwsd starts later can talk to the service manager in its name.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import attrs

log = logging.getLogger("jobworker.daemon")


@attrs.frozen
class Notifier:
    """Sends sd_notify messages to `address` (`None`: no service manager listens)."""

    address: str | bytes | None

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier `$NOTIFY_SOCKET` names; removes the variable from os.environ."""
        name = os.environ.pop("NOTIFY_SOCKET", "")
        if not name:
            return cls(None)
        if name.startswith("@"):
            # An abstract socket: its name starts with a NUL byte instead of '@'.
            return cls(b"\0" + name[1:].encode())
        return cls(name)

    def notify(self, **fields: str) -> bool:
        """Send one message of `KEY=VALUE` lines (e.g. READY="1"); True when it was sent.

        A service manager that cannot be reached is logged, never raised: jwsd
        serves all the same (systemd then times the start out and says why).
        """
        if self.address is None:
            return False
        message = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """jwsd serves: READY=1, and `status` as the line `systemctl status` shows."""
        return self.notify(READY="1", STATUS=status)

    def reloading(self, status: str) -> bool:
        """A reload has begun: RELOADING=1, the CLOCK_MONOTONIC time in microseconds
        (systemd 253+ checks it against the reload it asked for; 252 ignores it), and
        `status`. Send `ready()` when it is over, whether it succeeded or not."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING="1", MONOTONIC_USEC=str(now), STATUS=status)

    def stopping(self, status: str) -> bool:
        """jwsd's shutdown has begun: STOPPING=1, and `status`."""
        return self.notify(STOPPING="1", STATUS=status)
