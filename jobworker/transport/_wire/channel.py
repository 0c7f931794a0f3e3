"""The seams on purerpc's client side: `ChannelBase` (purerpc `_Channel`), what
purerpc's stubs read off a channel, and `stream_fn_of` (purerpc `ClientStub`), how a
stub starts its call, for the stubs of `calls` that end their calls explicitly.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from purerpc.client import _Channel

from jobworker.transport._wire.socket import HookedSocket


class ChannelBase(_Channel):  # type: ignore[misc]  # purerpc is untyped
    """purerpc's client channel, which its `Client` and generated stubs take.

    SEAM (purerpc `_Channel`, private): `purerpc.Client` reads `_grpc_socket`,
    `_host` and `_port` off the channel it is given; `_ssl_context` is kept there.
    `_Channel.__aenter__` would connect by itself (no timeout, no host name, its
    own socket class): it is skipped, and a subclass connects in `open()`.
    """

    @property
    def host(self) -> str:
        return str(self._host)

    @property
    def port(self) -> int:
        return int(self._port)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context  # type: ignore[no-any-return]

    @property
    def socket(self) -> HookedSocket | None:
        """The connection's socket once `open()` attached it."""
        return self._grpc_socket

    def attach(self, socket: HookedSocket) -> None:
        """Make `socket` the one purerpc's stubs start their calls on."""
        self._grpc_socket = socket

    async def __aenter__(self) -> Any:
        await AsyncExitStack.__aenter__(self)
        await self.open()
        return self

    async def open(self) -> None:
        """Connect, and `attach` the socket (a subclass's job)."""
        raise NotImplementedError


def stream_fn_of(stub: Any) -> Callable[..., Awaitable[Any]]:
    """The function a purerpc stub method starts its call's stream with.

    SEAM (purerpc `ClientStub._stream_fn`, private): `calls.explicit_call` rebuilds
    a stub around it, so that the call ends explicitly.
    """
    return stub._stream_fn  # type: ignore[no-any-return]
