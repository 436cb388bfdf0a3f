"""pycluster's internal message vocabulary, after Node's cluster module.

Internal messages are small JSON objects ``{"act": ..., "seq": ..., ...}`` carried in
frames of kind ``INTERNAL``, so they can never be confused with a user's message,
whatever its shape. A request carries a ``seq``; its reply is ``{"act": "reply",
"seq": <same>, ...}``.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from enum import Enum
from typing import Any

from pycluster.ipc.framing import ProtocolError


class Act(str, Enum):
    """Every internal message kind, and which side sends it."""

    ONLINE = "online"  # worker -> primary: the runtime is up
    QUERY_SERVER = "queryServer"  # worker -> primary: give me a listener for this address
    LISTENING = "listening"  # worker -> primary: a server of mine listens
    CLOSE = "close"  # worker -> primary: I closed this server
    READY = "ready"  # worker -> primary: ready to take over (rolling reload)
    EXITED_AFTER_DISCONNECT = "exitedAfterDisconnect"  # worker -> primary, before closing
    DISCONNECT = "disconnect"  # primary -> worker: close your servers, then the channel
    REPLY = "reply"  # either way: the answer to a request with the same seq


Message = dict[str, Any]
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_internal(act: Act, **fields: Any) -> bytes:
    """Serialize an internal message."""
    fields["act"] = act.value
    return _ENCODER.encode(fields).encode()


def decode_internal(payload: bytes) -> tuple[Act, Message]:
    """Parse an internal message; anything malformed is a protocol error."""
    try:
        msg = json.loads(payload)
        if not isinstance(msg, dict):
            raise ValueError("not an object")
        return Act(msg.get("act")), msg
    except ValueError as exc:
        raise ProtocolError(f"malformed internal message: {exc}") from exc


class Requests:
    """Sequence numbers of requests in flight, mapped to the futures of their replies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, Future[Message]] = {}

    def new(self) -> tuple[int, Future[Message]]:
        """Allocate a sequence number and the future its reply will resolve."""
        fut: Future[Message] = Future()
        with self._lock:
            self._seq += 1
            self._pending[self._seq] = fut
            return self._seq, fut

    def resolve(self, msg: Message) -> None:
        """Complete the request that ``msg`` (a reply) answers."""
        seq = msg.get("seq")
        with self._lock:
            fut = self._pending.pop(seq, None) if isinstance(seq, int) else None
        if fut is None:
            raise ProtocolError(f"reply to unknown request {seq!r}")
        fut.set_result(msg)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending request, for when the channel closes."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
