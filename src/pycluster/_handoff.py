"""The bytes on a round-robin hand-off socket, for both of its ends.

A hand-off socket is a ``SOCK_STREAM`` Unix socket pair, one per worker and server.
The primary sends connections down it in *batches*: one ``sendmsg`` per batch, with
one byte per connection and every descriptor of the batch attached to the first
byte. The worker reads one byte per ``accept()``, so the socket stays readable while
any connection of a batch is left to take, exactly as a listening socket stays
readable while its backlog holds one: a server that accepts once per readiness event
is served like one that accepts until ``EAGAIN``. The first ``recvmsg`` of a batch
brings all of its descriptors; the worker keeps the ones not taken yet until their
bytes come.

The first byte of a batch is its length (1 to :data:`MAX_BATCH`); each further byte
says whether another follows (:data:`MORE`) or it is the batch's last
(:data:`LAST`). Both are above :data:`MAX_BATCH`, so a byte says by itself whether
descriptors came with it. The worker answers one byte per connection, oldest first:
:data:`TOOK`, or :data:`DECLINED` when its descriptor never arrived (the worker was
out of descriptors), and the primary gives that one to another worker.
"""

from __future__ import annotations

import socket

#: Connections per ``sendmsg`` at most (Linux takes up to 253 descriptors in one).
MAX_BATCH = 64
#: Another connection of this batch follows.
MORE = ord("M")
#: The last connection of a batch.
LAST = ord("C")
#: The worker took its oldest hand-off.
TOOK = ord("A")
#: The worker could not take its oldest hand-off: it goes to another worker.
DECLINED = ord("D")
#: Room for a batch's descriptors in a ``recvmsg``.
ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_BATCH * 4)


def batch_bytes(count: int) -> bytes:
    """The bytes that carry a batch of ``count`` connections."""
    if not 1 <= count <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} connections, not {count}")
    return bytes([count]) + bytes([MORE]) * (count - 2) + bytes([LAST]) * (count > 1)


#: Every batch's bytes, by length.
BATCHES = [b""] + [batch_bytes(count) for count in range(1, MAX_BATCH + 1)]


def more_follows(byte: int) -> bool:
    """Whether another connection of the same batch follows the one ``byte`` carries."""
    return byte == MORE or 1 < byte <= MAX_BATCH
