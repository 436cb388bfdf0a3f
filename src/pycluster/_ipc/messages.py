"""pycluster's internal message vocabulary, after Node's cluster module.

Internal messages are small JSON objects ``{"act": ..., "seq": ..., ...}`` carried in
frames of kind ``INTERNAL``, so they can never be confused with a user's message,
whatever its shape. A request carries a ``seq``; its reply is ``{"act": "reply",
"seq": <same>, ...}``.
"""

from __future__ import annotations

import threading
from enum import Enum
from typing import TYPE_CHECKING, Any

from pycluster._ipc.framing import ProtocolError

if TYPE_CHECKING:
    import json


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
_encoder: json.JSONEncoder | None = None  # built with the first message that needs it


def encode_internal(act: Act, **fields: Any) -> bytes:
    """Serialize an internal message."""
    if not fields:
        # 'online' and the like: no encoder needed, so a worker comes online without
        # importing json (the values are plain identifiers).
        return b'{"act":"%s"}' % act.value.encode()
    global _encoder
    if _encoder is None:
        import json

        _encoder = json.JSONEncoder(separators=(",", ":"))
    fields["act"] = act.value
    return _encoder.encode(fields).encode()


_INT = (int,)
_OPT_INT = (int, type(None))
_ADDRESS = (str, type(None))
#: The fields a worker's request must carry, and their JSON types (bool is no int here).
_FIELDS: dict[Act, dict[str, tuple[type, ...]]] = {
    Act.QUERY_SERVER: {
        "seq": _INT,
        "address": _ADDRESS,
        "port": _OPT_INT,
        "family": _INT,
        "type": _INT,
        "backlog": _OPT_INT,
        "fd": _OPT_INT,
        "dualstack": (bool, type(None)),
        "policy": _OPT_INT,
        "index": _OPT_INT,
    },
    Act.LISTENING: {
        "address": _ADDRESS,
        "port": _OPT_INT,
        "addressType": (int, str),
        "handle": _OPT_INT,
    },
    Act.CLOSE: {"handle": _INT},
}


def decode_internal(payload: bytes) -> tuple[Act, Message]:
    """Parse an internal message; anything malformed is a protocol error."""
    import json  # after 'online': a worker's start does not wait for it

    try:
        msg = json.loads(payload)
        if not isinstance(msg, dict):
            raise ValueError("not an object")
        act = Act(msg.get("act"))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed internal message: {exc}") from None
    for name, types in _FIELDS.get(act, {}).items():
        value = msg.get(name)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ProtocolError(
                f"malformed {act.value!r} message: field {name!r} is {type(value).__name__}"
            )
        if isinstance(value, int) and not -(2**31) <= value < 2**31:
            raise ProtocolError(f"malformed {act.value!r} message: field {name!r} out of range")
    return act, msg


class Future:
    """The reply to one request, waited for by the requesting thread.

    (A small stand-in for ``concurrent.futures.Future``, which would cost a worker
    several milliseconds of start-up to import.)
    """

    __slots__ = ("_done", "_result", "_error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: Message | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """Whether the reply (or an error) has arrived."""
        return self._done.is_set()

    def set_result(self, result: Message) -> None:
        """Deliver the reply."""
        self._result = result
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        """Fail the request."""
        self._error = error
        self._done.set()

    def result(self, timeout: float | None = None) -> Message:
        """Block until the reply arrives and return it (or raise the failure)."""
        if not self._done.wait(timeout):
            raise TimeoutError("no reply from the primary")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class Requests:
    """Sequence numbers of requests in flight, mapped to the futures of their replies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, Future] = {}

    def new(self) -> tuple[int, Future]:
        """Allocate a sequence number and the future its reply will resolve."""
        fut = Future()
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
