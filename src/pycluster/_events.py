"""Node-style event emitters for the cluster module and its workers, built on pyee."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from pyee import EventEmitter as _PyeeEmitter

CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], None]


class EventEmitter(_PyeeEmitter):
    """An emitter with Node's method names, where a coroutine function may listen.

    A listener that returns a coroutine has it handed to ``_coroutine_runner`` (the
    primary schedules it on its loop and treats its exception like a synchronous
    listener's). ``emit('error', exc)`` with no listener raises ``exc``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._coroutine_runner: CoroutineRunner | None = None

    def off(self, event: str, listener: Callable[..., Any]) -> None:
        """Remove ``listener`` from ``event`` (Node's ``off``)."""
        self.remove_listener(event, listener)

    def _call_handlers(self, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        # pyee's version builds an empty OrderedDict for every event nobody listens
        # to; on the message path that is a measurable share of a round trip.
        handlers = self._events.get(event)
        if not handlers:
            return False
        with self._lock:
            funcs = list(handlers.values())
        for f in funcs:
            self._emit_run(f, args, kwargs)
        return True

    def _emit_run(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        result = f(*args, **kwargs)
        if isinstance(result, Coroutine):
            if self._coroutine_runner is None:
                result.close()
                raise RuntimeError(
                    f"listener {f!r} is a coroutine function, but no event loop runs listeners here"
                )
            self._coroutine_runner(result)
