"""A worker's message delivery: held messages reach the first listener first, in order."""

from __future__ import annotations

from typing import Any

from pycluster._events import EventEmitter
from pycluster._ipc.framing import Codec
from pycluster._worker import Worker


def opener(payload: bytes | bytearray, codec: Any, fds: list[int]) -> tuple[Any, Any]:
    """Decode as the runtime would: here the payload is the message itself."""
    return bytes(payload).decode(), None


def test_held_messages_come_first_even_while_a_listener_is_being_added() -> None:
    worker = Worker(1, backend=None)  # type: ignore[arg-type]
    worker._deliver(opener, b"first", Codec.JSON, [])  # nobody listens yet: held
    got: list[str] = []

    def listener(message: str, handle: Any) -> None:
        got.append(message)

    # The moment inside on(): the listener is registered but the held messages are
    # not delivered yet. A message arriving now must queue behind them.
    EventEmitter._add_event_handler(worker, "message", listener, listener)
    worker._deliver(opener, b"second", Codec.JSON, [])
    assert got == []
    worker.on("message", lambda message, handle: None)  # the delivery of what is held
    assert got == ["first", "second"]
    worker._deliver(opener, b"third", Codec.JSON, [])  # nothing held: straight through
    assert got == ["first", "second", "third"]


def test_a_listener_that_returns_a_value_is_not_a_coroutine() -> None:
    emitter = EventEmitter()
    seen: list[int] = []
    emitter.on("x", lambda n: seen.append(n) or True)  # returns True, as send() does
    emitter.on("x", lambda n: seen.append(n * 10))
    assert emitter.emit("x", 1)
    assert seen == [1, 10]
