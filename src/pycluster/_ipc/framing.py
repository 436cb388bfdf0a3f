"""The wire format of the IPC channel, and a sans-I/O decoder for it.

A channel is a ``SOCK_STREAM`` Unix socket pair. Each message is one *frame*: a
fixed 16-byte header followed by the payload. All integers are big-endian::

    offset  size  field
    0       2     magic      b"PC"
    2       1     version    1 (a decoder rejects any other value)
    3       1     kind       0 = internal (pycluster's own vocabulary), 1 = user
    4       1     codec      0 = JSON (UTF-8), 1 = advanced (pickle protocol 5,
                             decoded against an allow-list in the primary)
    5       1     flags      reserved, must be 0 in version 1
    6       2     nfds       number of descriptors carried by the frame (0..253)
    8       8     length     payload length in bytes (unsigned 64-bit; at most
                             the ``max_message_size`` setting, 64 MiB by default)
    16      ...   payload

Descriptors travel as ``SCM_RIGHTS`` ancillary data. The sender writes a frame that
carries descriptors in *one* ``sendmsg`` call, with the descriptors attached to it. On
a stream socket the kernel attaches them to the first byte of that call and never
merges two descriptor-carrying writes into one read, so the reader receives them
with the chunk that holds the frame's first byte. The decoder enforces exactly that:
descriptors that arrive with a chunk belong to the first frame *starting* in that
chunk that declares descriptors, the count must match, and descriptors that no frame
claims are a protocol error. Every descriptor the decoder has taken is either handed
out with its frame or closed, including on error.

The first eight bytes of a header (magic to ``nfds``), read as one big-endian integer,
are the frame's *head word*: both ends precompute the word of a user frame in their
channel's codec without descriptors, so the common case costs one two-field
``pack``/``unpack`` and one integer comparison (:func:`head_word`, :data:`WORDS`).

Why a header and not newline-delimited JSON: binary payloads, descriptors bound to a
frame, a version byte to evolve the format, and 64-bit lengths so a message over
4 GiB never needs the patch that ``multiprocessing.connection`` needed.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum

MAGIC = b"PC"
VERSION = 1
HEADER = struct.Struct("!2sBBBBHQ")
HEADER_SIZE = HEADER.size
#: The same 16 bytes as (head word, length): see :func:`head_word`.
WORDS = struct.Struct("!QQ")
#: The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
MAX_FDS = 253
#: Default ceiling on a payload (the ``max_message_size`` setting): a larger
#: declared length is a protocol error as soon as the header is read, so a peer
#: cannot make the reader buffer gigabytes; a sender refuses to build such a frame.
DEFAULT_MAX_PAYLOAD = 64 << 20


def check_size(length: int, limit: int) -> None:
    """Refuse to build a frame whose payload is over ``limit`` bytes (``ValueError``)."""
    if length > limit:
        raise ValueError(
            f"message of {length} bytes exceeds max_message_size ({limit} bytes); nothing was sent"
        )


class Kind(IntEnum):
    """Who a frame is for: pycluster itself or the user's listeners."""

    INTERNAL = 0
    USER = 1


class Codec(IntEnum):
    """How a frame's payload is encoded."""

    JSON = 0
    ADVANCED = 1


# Members by value, for the decoder: indexing a tuple is far cheaper than Kind(n).
_KINDS = (Kind.INTERNAL, Kind.USER)
_CODECS = (Codec.JSON, Codec.ADVANCED)


class ProtocolError(Exception):
    """A peer sent bytes or descriptors that are not a valid frame stream."""


class Frame:
    """One decoded frame: its kind, codec, payload and the descriptors it carried."""

    __slots__ = ("kind", "codec", "payload", "fds")

    def __init__(self, kind: Kind, codec: Codec, payload: bytes, fds: list[int] | None = None):
        self.kind = kind
        self.codec = codec
        self.payload = payload
        self.fds: list[int] = fds if fds is not None else []

    def __repr__(self) -> str:
        return (
            f"Frame({self.kind.name}, {self.codec.name}, {len(self.payload)} bytes, fds={self.fds})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.kind, self.codec, self.payload, self.fds) == (
            other.kind,
            other.codec,
            other.payload,
            other.fds,
        )

    __hash__ = None  # type: ignore[assignment]


def encode_header(kind: Kind, codec: Codec, length: int, nfds: int = 0) -> bytes:
    """Return the 16-byte header for a frame."""
    if not 0 <= nfds <= MAX_FDS:
        raise ValueError(f"a frame carries at most {MAX_FDS} descriptors, not {nfds}")
    return HEADER.pack(MAGIC, VERSION, kind, codec, 0, nfds, length)


def head_word(kind: Kind, codec: Codec, nfds: int = 0) -> int:
    """The first eight header bytes of such a frame as one integer (flags are 0).

    ``WORDS.pack(head_word(kind, codec), length)`` is the same 16 bytes as
    ``encode_header(kind, codec, length)``, at about half the cost.
    """
    return int.from_bytes(HEADER.pack(MAGIC, VERSION, kind, codec, 0, nfds, 0)[:8], "big")


def close_fds(fds: list[int]) -> None:
    """Close descriptors that will not be handed to anyone, ignoring ones already gone."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Decoder:
    """Turns received chunks (bytes plus the descriptors read with them) into frames.

    Feed it exactly what each ``recvmsg`` returned; it keeps partial frames between
    calls. After a :class:`ProtocolError` the decoder is closed: every descriptor it
    held has been closed and further input is refused.
    """

    __slots__ = ("_buf", "_head_fds", "_max_payload", "_closed")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        # Descriptors that arrived with the chunk in which the incomplete frame at
        # the head of the buffer begins, not yet claimed by it.
        self._head_fds: list[int] = []
        self._max_payload = max_payload
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held so far."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """Whether part of a frame, or descriptors for it, are held for the next chunk."""
        return bool(self._buf or self._head_fds)

    def feed(self, data: bytes | memoryview, fds: list[int] | tuple[int, ...] = ()) -> list[Frame]:
        """Consume one received chunk and return the frames it completed, in order."""
        if self._closed:
            close_fds(list(fds))
            raise ProtocolError("decoder is closed after an earlier protocol error")
        if not self._buf and not fds and not self._head_fds:
            return self._feed_plain(data)
        return self._feed_general(data, fds)

    def _feed_plain(self, data: bytes | memoryview) -> list[Frame]:
        # The common case on a busy channel: nothing buffered, no descriptors, the
        # chunk holds whole frames. Frames are cut straight from the chunk, without
        # copying it into the buffer first; only an incomplete tail is kept.
        frames: list[Frame] = []
        pos = 0
        size = len(data)
        unpack = HEADER.unpack_from
        while size - pos >= HEADER_SIZE:
            magic, version, kind, codec, flags, nfds, length = unpack(data, pos)
            if (
                magic != MAGIC
                or version != VERSION
                or kind > 1
                or codec > 1
                or flags
                or nfds
                or length > self._max_payload
            ):
                break  # let the general path name the problem (or take the descriptors)
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            frames.append(Frame(_KINDS[kind], _CODECS[codec], bytes(data[pos + HEADER_SIZE : end])))
            pos = end
        if pos == size:
            return frames
        return frames + self._feed_general(data[pos:], ())

    def _feed_general(
        self, data: bytes | memoryview, fds: list[int] | tuple[int, ...]
    ) -> list[Frame]:
        base = len(self._buf)
        self._buf += data
        chunk_fds = list(fds)
        frames: list[Frame] = []
        pos = 0
        try:
            while True:
                # Only the head frame can have begun in an earlier chunk.
                from_old = pos == 0 and base > 0
                avail = self._head_fds if from_old else chunk_fds
                if len(self._buf) - pos < HEADER_SIZE:
                    break
                kind, codec, nfds, length = self._parse_header(pos)
                if nfds and len(avail) != nfds:
                    raise ProtocolError(
                        f"frame declares {nfds} descriptor(s) but {len(avail)} arrived with it"
                    )
                end = pos + HEADER_SIZE + length
                if len(self._buf) < end:
                    break
                frame_fds: list[int] = []
                if nfds:
                    frame_fds, avail[:] = list(avail), []
                elif from_old and self._head_fds:
                    raise ProtocolError("descriptors arrived with a frame that declares none")
                with memoryview(self._buf) as view:
                    payload = bytes(view[pos + HEADER_SIZE : end])
                frames.append(Frame(kind, codec, payload, frame_fds))
                pos = end
            # `pos` is now the start of an incomplete frame, or the end of the data.
            if pos == 0 and base > 0:
                if chunk_fds:
                    raise ProtocolError("descriptors arrived in the middle of a frame")
            else:
                if self._head_fds:
                    raise ProtocolError("descriptors arrived with a frame that declares none")
                if pos == len(self._buf) and chunk_fds:
                    raise ProtocolError("descriptors arrived without a frame to carry them")
                self._head_fds = chunk_fds
                chunk_fds = []
            del self._buf[:pos]
        except ProtocolError:
            for frame in frames:
                close_fds(frame.fds)
            close_fds(chunk_fds)
            self.close()
            raise
        return frames

    def _parse_header(self, pos: int) -> tuple[Kind, Codec, int, int]:
        magic, version, kind, codec, flags, nfds, length = HEADER.unpack_from(self._buf, pos)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {magic!r}: not a pycluster frame")
        if version != VERSION:
            raise ProtocolError(f"unsupported frame version {version}")
        if kind > 1:
            raise ProtocolError(f"unknown frame kind {kind}")
        if codec > 1:
            raise ProtocolError(f"unknown codec {codec}")
        if flags:
            raise ProtocolError(f"reserved flags set: {flags:#x}")
        if nfds > MAX_FDS:
            raise ProtocolError(f"frame declares {nfds} descriptors, more than {MAX_FDS}")
        if length > self._max_payload:
            raise ProtocolError(
                f"frame length {length} exceeds the limit of {self._max_payload} bytes"
            )
        return _KINDS[kind], _CODECS[codec], nfds, length

    def close(self) -> None:
        """Drop buffered data and close every descriptor not yet handed out."""
        self._closed = True
        self._buf.clear()
        close_fds(self._head_fds)
        self._head_fds = []
