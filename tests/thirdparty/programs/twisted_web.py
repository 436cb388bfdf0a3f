"""twisted.web on Twisted's own reactor: ``reactor.listenTCP``, then ``reactor.run()``.

Usage: ``twisted_web.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes half
a second (without blocking the reactor), ``/echo`` returns the body it was sent.
Twisted stops its reactor on SIGINT and SIGTERM by itself; like a Twisted server that
means to stop gracefully, this one stops listening and lets the requests in progress
finish first (a "before shutdown" trigger). Writes ``cleanup-PID`` once
``reactor.run()`` has returned.
"""

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.web import resource, server

#: Requests being answered, and who waits for them to end (the shutdown).
in_flight: set[server.Request] = set()
drained: list[defer.Deferred[None]] = []


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


def release() -> None:
    """The requests in progress are answered: let the shutdown go on."""
    while drained:
        drained.pop().callback(None)


class Root(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes | int:
        if request.path == b"/slow":
            mark("slow")
            in_flight.add(request)

            def finish() -> None:
                request.write(f"slow done {os.getpid()}".encode())
                request.finish()
                in_flight.discard(request)
                if not in_flight:
                    # The shutdown drops every connection at once: give the reactor a
                    # moment to send what was just written first.
                    reactor.callLater(0.05, release)  # type: ignore[attr-defined]

            reactor.callLater(0.5, finish)  # type: ignore[attr-defined]
            return server.NOT_DONE_YET
        return str(os.getpid()).encode()

    def render_POST(self, request: server.Request) -> bytes:
        return request.content.read()


def before_shutdown(port: Any) -> defer.Deferred[None]:
    """Stop listening, then wait for the requests in progress."""

    def wait(_: object) -> defer.Deferred[None] | None:
        if not in_flight:
            return None
        done: defer.Deferred[None] = defer.Deferred()
        drained.append(done)
        return done

    return defer.maybeDeferred(port.stopListening).addCallback(wait)


if __name__ == "__main__":
    port = reactor.listenTCP(  # type: ignore[attr-defined]
        int(sys.argv[1]), server.Site(Root()), interface="127.0.0.1"
    )
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", before_shutdown, port
    )
    reactor.run()  # type: ignore[attr-defined]
    mark("cleanup")
