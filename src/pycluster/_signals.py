"""Signal names and numbers, as Node's API spells them ("SIGTERM") and as the OS does."""

from __future__ import annotations

import signal as _signal

__all__ = ["signal_name", "signal_number"]


def signal_number(sig: int | str) -> int:
    """Accept ``"SIGTERM"``, ``"TERM"``, ``15`` or ``signal.SIGTERM``."""
    if isinstance(sig, str):
        name = sig.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            raise ValueError(f"unknown signal {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"signal must be a name or a number, not {type(sig).__name__}")
    return int(sig)


def signal_name(signum: int) -> str:
    """``9`` -> ``"SIGKILL"``."""
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"
