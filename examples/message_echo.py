"""The seed's message example: the primary sends ``'hi there'``, the worker echoes it.

Run it with ``python examples/message_echo.py``. The primary prints what came back,
disconnects the worker, and the program ends once the worker has exited.
"""

from __future__ import annotations

from typing import Any

import pycluster as cluster

if cluster.is_primary:
    worker = cluster.fork()
    # Sent before the worker listens: pycluster holds it until a listener is there.
    worker.send("hi there")

    @worker.on("message")
    def on_message(message: Any, handle: object) -> None:
        print(f"primary got back: {message!r}")
        worker.disconnect()

    cluster.run()
else:
    # Send every message straight back. Listeners run on the worker's channel
    # thread, so the main thread just waits until the primary disconnects us.
    cluster.worker.on("message", lambda message, handle: cluster.worker.send(message))
    cluster.worker.wait_disconnected()
