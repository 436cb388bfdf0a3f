"""The hello-world HTTP/1.1 handler on asyncio streams that bench/http.py's asyncio
servers share: pycluster's (``pyc_asyncio.py``) and the hand-off floor's workers
(``floor_worker.py``), so that the two differ only in how connections reach them.

``served`` and ``fresh`` count this process's requests (``fresh``: those for
``FRESH_PATH``) for the worker's record at exit.
"""

from __future__ import annotations

import asyncio

from _counts import FRESH_REQUEST_LINE

BODY = b"hello world\n"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
RESPONSE_KEEP_ALIVE = _HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY

served = 0
fresh = 0


def wants_close(head: bytes) -> bool:
    """Whether the request head asks to close the connection after the response.

    HTTP/1.1 keeps the connection unless ``Connection: close``; HTTP/1.0 closes unless
    ``Connection: keep-alive``. Headers are case-insensitive, hence the lower().
    """
    lowered = head.lower()
    if head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0"):
        return b"connection: keep-alive" not in lowered
    return b"connection: close" in lowered


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve GET requests on one connection until the client or the request closes it."""
    global served, fresh
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            served += 1
            if head.startswith(FRESH_REQUEST_LINE):
                fresh += 1
            if wants_close(head):
                writer.write(RESPONSE_CLOSE)
                await writer.drain()
                break
            writer.write(RESPONSE_KEEP_ALIVE)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away mid-request; nothing to answer
    finally:
        writer.close()
