"""One write per small response for uvicorn's HTTP protocols in ``pycluster serve``.

uvicorn writes a response's status line and headers when the application sends
``http.response.start``, and the body when it sends ``http.response.body``: two
``send()`` calls, two TCP segments and two wake-ups of the client for a response
that fits in one. On a hello-world app under keep-alive those two system calls were
a quarter of a worker's time. :class:`CoalescingTransport` holds a small first write
until the next one (which then goes out with it, in one ``writelines``, a single
``writev`` on uvloop) or until the loop's next turn, whichever comes first: a
response whose body is sent in the same step as its headers leaves in one segment,
and one whose body comes later still has its headers sent at once.

Only one small write is ever held, so flow control is the transport's as before:
a large write, or a second one, goes straight through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

#: The largest write held back for the next one (a status line and headers are far
#: smaller; a larger write goes out at once).
HOLD_LIMIT = 4096


class CoalescingTransport(asyncio.Transport):
    """A transport that sends a small write together with the one that follows it."""

    __slots__ = ("_real", "_loop", "_held")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._real = real
        self._loop = loop
        self._held: bytes | None = None

    # -- writing -------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``: held a moment if small and nothing is held, else with what is."""
        held = self._held
        if held is not None:
            self._held = None
            self._real.writelines((held, data))
        elif 0 < len(data) <= HOLD_LIMIT and not self._real.is_closing():
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._real.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send every buffer (after anything held)."""
        held, self._held = self._held, None
        chunks = list(list_of_data)
        self._real.writelines([held, *chunks] if held is not None else chunks)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._real.is_closing():
            self._real.write(held)

    def write_eof(self) -> None:
        """Send what is held, then end the writing side."""
        self._flush()
        self._real.write_eof()

    def can_write_eof(self) -> bool:
        """As the transport."""
        return self._real.can_write_eof()

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent, held ones included."""
        return self._real.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """As the transport."""
        return self._real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """As the transport."""
        self._real.set_write_buffer_limits(high, low)

    # -- ending --------------------------------------------------------------------------
    def close(self) -> None:
        """Send what is held, then close (the transport sends its own buffer first)."""
        self._flush()
        self._real.close()

    def abort(self) -> None:
        """Close at once: what is held is dropped, as the transport drops its buffer."""
        self._held = None
        self._real.abort()

    def is_closing(self) -> bool:
        """As the transport."""
        return self._real.is_closing()

    # -- the rest, as the transport ---------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As the transport; ``"socket"`` answers its addresses from the transport's own."""
        if name == "socket" and self._real.get_extra_info("sockname") is not None:
            return KnownAddresses(self._real)
        return self._real.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """As the transport (a WebSocket upgrade gives the connection a new protocol)."""
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """As the transport."""
        return self._real.get_protocol()

    def is_reading(self) -> bool:
        """As the transport."""
        return self._real.is_reading()

    def pause_reading(self) -> None:
        """As the transport."""
        self._real.pause_reading()

    def resume_reading(self) -> None:
        """As the transport."""
        self._real.resume_reading()


class KnownAddresses:
    """A transport's socket whose two addresses come from what the transport knows.

    uvicorn's protocols ask every new connection's ``"socket"`` for ``getsockname()``
    and ``getpeername()``. The transport read both when it was made (its
    ``"sockname"`` and ``"peername"``), but uvloop's socket object asks the kernel
    again and builds a ``socket.socket`` for each question (which asks once more, to
    check the descriptor): five system calls per connection. Anything else is asked of
    the transport's socket, fetched when first needed.
    """

    __slots__ = ("_transport", "_sock")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._sock: Any = None

    def _socket(self) -> Any:
        if self._sock is None:
            self._sock = self._transport.get_extra_info("socket")
        return self._sock

    def getsockname(self) -> Any:
        """The local address, as the transport saw it (else the socket's answer)."""
        name = self._transport.get_extra_info("sockname")
        return self._socket().getsockname() if name is None else name

    def getpeername(self) -> Any:
        """The peer's address, as the transport saw it (else the socket's answer)."""
        name = self._transport.get_extra_info("peername")
        return self._socket().getpeername() if name is None else name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket(), name)

    def __repr__(self) -> str:
        return repr(self._socket())


def coalescing(protocol_class: type, loop: asyncio.AbstractEventLoop) -> type:
    """``protocol_class`` (uvicorn's) with its transport wrapped in :class:`CoalescingTransport`."""

    class Coalescing(protocol_class):  # type: ignore[misc]
        __doc__ = f"{protocol_class.__name__} writing through a CoalescingTransport."

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # Not an isinstance() check: uvloop's transports are not asyncio.Transport
            # subclasses.
            super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport), loop))

    Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{protocol_class.__name__}"
    return Coalescing
