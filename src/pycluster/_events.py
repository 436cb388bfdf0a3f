"""Node-style event emitters for the cluster module and its workers, built on pyee."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any

from pyee import EventEmitter as _PyeeEmitter

CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], None]
# What listeners commonly return (``send()``'s bool, a count): surely no coroutine, so
# the abstract-class check (about 0.5 us) is skipped for them.
_PLAIN = frozenset({bool, int, float, str, bytes, tuple, list, dict})


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

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        """Call every listener of ``event`` with the arguments; ``True`` if there was one.

        pyee's own ``emit`` goes through three more method calls per event; this runs
        once per message on both ends of the channel, so it is done here in one. The
        listeners are copied without pyee's lock: ``tuple()`` of the dict's values runs
        in C without releasing the GIL, so no other thread's change can interleave.
        """
        handlers = self._events.get(event)
        if not handlers:
            if event == "error":
                self._emit_handle_potential_error(event, args[0] if args else None)
            return False
        for f in tuple(handlers.values()):
            result = f(*args, **kwargs)
            if (
                result is not None
                and type(result) not in _PLAIN
                and (type(result) is CoroutineType or isinstance(result, Coroutine))
            ):
                self._run_coroutine(f, result)
        return True

    def _run_coroutine(self, f: Callable[..., Any], coro: Coroutine[Any, Any, Any]) -> None:
        if self._coroutine_runner is None:
            coro.close()
            raise RuntimeError(
                f"listener {f!r} is a coroutine function, but no event loop runs listeners here"
            )
        self._coroutine_runner(coro)
