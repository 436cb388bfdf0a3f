"""The IPC frame decoder, fuzzed: valid streams decode exactly, bad input fails cleanly.

Every descriptor in these tests is real (duplicates of a pipe end), so "no leak"
means exactly that: each descriptor handed to the decoder is, afterwards, either in
a frame the decoder returned or closed. The decoder may only ever raise
``ProtocolError``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pycluster._ipc.channel import READ_SIZE, LoopChannel, ThreadChannel
from pycluster._ipc.fds import ancillary_for, recv_chunk
from pycluster._ipc.framing import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_FDS,
    VERSION,
    Codec,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    encode_header,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe_end() -> Iterator[int]:
    """One open descriptor that every test duplicates, so each fd is real and cheap."""
    r, w = os.pipe()
    yield r
    os.close(r)
    os.close(w)


def is_open(fd: int) -> bool:
    """Whether ``fd`` is an open descriptor in this process."""
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def open_fd_count() -> int:
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


@dataclass
class Spec:
    """A frame to send: what the decoder should hand back for it."""

    kind: Kind
    codec: Codec
    payload: bytes
    nfds: int

    def wire(self) -> bytes:
        return encode_header(self.kind, self.codec, len(self.payload), self.nfds) + self.payload


specs = st.builds(
    Spec,
    kind=st.sampled_from(Kind),
    codec=st.sampled_from(Codec),
    payload=st.binary(max_size=80),
    nfds=st.sampled_from([0, 0, 0, 1, 2, 3]),
)


@dataclass
class Plan:
    """A frame stream cut into chunks, with the descriptors each chunk carries."""

    specs: list[Spec]
    chunks: list[bytes]
    # For each chunk, the index of the descriptor-carrying frame that starts in it.
    owner: list[int | None]
    # Offset of each frame's first byte in the stream.
    starts: list[int]


@st.composite
def plans(draw: st.DrawFn, min_frames: int = 0) -> Plan:
    """A valid stream split at arbitrary points, as the kernel could deliver it.

    The kernel attaches a write's descriptors to the read that returns its first
    byte and never merges two descriptor-carrying writes into one read, so two
    frames that carry descriptors always start in different chunks.
    """
    frames = draw(st.lists(specs, min_size=min_frames, max_size=8))
    stream = b"".join(f.wire() for f in frames)
    starts = []
    pos = 0
    for f in frames:
        starts.append(pos)
        pos += len(f.wire())
    cuts = set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    cuts = {c for c in cuts if 0 < c < len(stream)}
    fd_starts = [s for s, f in zip(starts, frames, strict=True) if f.nfds]
    for a, b in zip(fd_starts, fd_starts[1:], strict=False):
        if not any(a < c <= b for c in cuts):
            cuts.add(b)
    bounds = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    owner: list[int | None] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b <= a:
            continue
        holders = [i for i, s in enumerate(starts) if a <= s < b and frames[i].nfds]
        assert len(holders) <= 1
        owner.append(holders[0] if holders else None)
    return Plan(frames, chunks, owner, starts)


def descriptors_for(plan: Plan, pipe_end: int) -> list[list[int]]:
    """Fresh real descriptors for every frame of ``plan`` that declares some."""
    return [[os.dup(pipe_end) for _ in range(f.nfds)] for f in plan.specs]


def feed_all(
    dec: Decoder, chunks: list[bytes], chunk_fds: list[list[int]]
) -> tuple[list[Frame], ProtocolError | None]:
    """Feed every chunk, stopping at the first protocol error.

    Descriptors of chunks never fed (after the error) are closed here, as a reader
    that stops reading would close them; anything but ``ProtocolError`` propagates.
    """
    frames: list[Frame] = []
    for i, (data, fds) in enumerate(zip(chunks, chunk_fds, strict=True)):
        try:
            frames += dec.feed(data, fds)
        except ProtocolError as exc:
            for rest in chunk_fds[i + 1 :]:
                close_all(rest)
            return frames, exc
    return frames, None


def assert_no_leak(all_fds: list[int], frames: list[Frame]) -> None:
    """Every descriptor is either handed out in exactly one frame, or closed."""
    handed = [fd for f in frames for fd in f.fds]
    assert len(handed) == len(set(handed))
    for fd in all_fds:
        if fd in handed:
            assert is_open(fd)
        else:
            assert not is_open(fd), f"descriptor {fd} leaked"
    close_all(handed)


# -- valid streams ---------------------------------------------------------------------------


class TestValidStreams:
    """Any split of a valid stream decodes to exactly the frames sent."""

    @FUZZ
    @given(plan=plans())
    def test_split_stream_decodes_exactly(self, plan: Plan, pipe_end: int) -> None:
        per_frame = descriptors_for(plan, pipe_end)
        chunk_fds = [list(per_frame[o]) if o is not None else [] for o in plan.owner]
        dec = Decoder()
        frames, error = feed_all(dec, plan.chunks, chunk_fds)
        assert error is None
        assert [(f.kind, f.codec, f.payload, f.fds) for f in frames] == [
            (s.kind, s.codec, s.payload, fds) for s, fds in zip(plan.specs, per_frame, strict=True)
        ]
        assert all(type(f.kind) is Kind and type(f.codec) is Codec for f in frames)
        assert dec.buffered == 0
        for fds in per_frame:
            assert all(is_open(fd) for fd in fds)
            close_all(fds)

    @FUZZ
    @given(plan=plans(min_frames=1), data=st.data())
    def test_truncated_stream_keeps_complete_frames_and_closes_the_rest(
        self, plan: Plan, data: st.DataObject, pipe_end: int
    ) -> None:
        stream = b"".join(plan.chunks)
        cut = data.draw(st.integers(0, len(stream) - 1))
        per_frame = descriptors_for(plan, pipe_end)
        # Re-cut the plan's chunks at `cut`: the stream simply ends there.
        chunks, chunk_fds, pos = [], [], 0
        for chunk, owner in zip(plan.chunks, plan.owner, strict=True):
            arrived = owner is not None and plan.starts[owner] < cut
            if owner is not None and not arrived:
                close_all(per_frame[owner])  # its first byte never arrived
            if pos < cut:
                chunks.append(chunk[: cut - pos])
                chunk_fds.append(list(per_frame[owner]) if arrived and owner is not None else [])
            pos += len(chunk)
        dec = Decoder()
        frames, error = feed_all(dec, chunks, chunk_fds)
        assert error is None
        complete = 0
        end = 0
        for spec in plan.specs:
            end += len(spec.wire())
            if end <= cut:
                complete += 1
        assert [f.payload for f in frames] == [s.payload for s in plan.specs[:complete]]
        dec.close()  # the peer hung up mid-frame
        assert_no_leak([fd for fds in per_frame for fd in fds], frames)
        assert all(not is_open(fd) for fds in per_frame[complete:] for fd in fds)

    def test_empty_payload_and_empty_chunks(self) -> None:
        dec = Decoder()
        assert dec.feed(b"") == []
        frames = dec.feed(encode_header(Kind.USER, Codec.JSON, 0))
        assert frames == [Frame(Kind.USER, Codec.JSON, b"", [])]

    def test_byte_at_a_time_with_descriptors(self, pipe_end: int) -> None:
        fds = [os.dup(pipe_end), os.dup(pipe_end)]
        wire = encode_header(Kind.INTERNAL, Codec.JSON, 3, 2) + b"abc"
        dec = Decoder()
        got = dec.feed(wire[:1], fds)
        for i in range(1, len(wire)):
            got += dec.feed(wire[i : i + 1])
        assert got == [Frame(Kind.INTERNAL, Codec.JSON, b"abc", fds)]
        close_all(fds)

    def test_max_fds_is_accepted(self, pipe_end: int) -> None:
        fds = [os.dup(pipe_end) for _ in range(MAX_FDS)]
        frames = Decoder().feed(encode_header(Kind.USER, Codec.JSON, 0, MAX_FDS), fds)
        assert frames[0].fds == fds
        close_all(fds)


# -- invalid input ---------------------------------------------------------------------------


def header(
    magic: bytes = MAGIC,
    version: int = VERSION,
    kind: int = 1,
    codec: int = 0,
    flags: int = 0,
    nfds: int = 0,
    length: int = 0,
) -> bytes:
    """A header with any field set to anything, valid or not."""
    return HEADER.pack(magic, version, kind, codec, flags, nfds, length)


def expect_protocol_error(chunks: list[tuple[bytes, list[int]]], max_payload: int = 1 << 20) -> str:
    """Feed chunks; assert a ProtocolError comes and every descriptor given is closed."""
    dec = Decoder(max_payload)
    given_fds: list[int] = []
    for i, (data, fds) in enumerate(chunks):
        given_fds += fds
        try:
            frames = dec.feed(data, fds)
        except ProtocolError as exc:
            for _, rest in chunks[i + 1 :]:
                close_all(rest)
            assert all(not is_open(fd) for fd in given_fds), "a descriptor leaked"
            return str(exc)
        for f in frames:
            close_all(f.fds)
    pytest.fail("no ProtocolError")


class TestBadHeaders:
    """A header field out of range is a protocol error as soon as the header is in."""

    @pytest.mark.parametrize(
        ("fields", "words"),
        [
            ({"magic": b"XX"}, "magic"),
            ({"magic": b"pc"}, "magic"),
            ({"version": 0}, "version"),
            ({"version": 2}, "version"),
            ({"kind": 2}, "kind"),
            ({"kind": 255}, "kind"),
            ({"codec": 2}, "codec"),
            ({"flags": 1}, "flags"),
            ({"flags": 0x80}, "flags"),
            ({"nfds": MAX_FDS + 1}, "descriptors"),
            ({"length": (1 << 20) + 1}, "exceeds"),
            ({"length": (1 << 64) - 1}, "exceeds"),
        ],
    )
    def test_bad_field(self, fields: dict[str, object], words: str, pipe_end: int) -> None:
        nfds = fields.get("nfds", 0)
        assert isinstance(nfds, int)
        fds = [os.dup(pipe_end) for _ in range(min(nfds, 3))] or [os.dup(pipe_end)]
        if "nfds" not in fields:
            fields = {**fields, "nfds": 1}
        message = expect_protocol_error([(header(**fields), fds)])  # type: ignore[arg-type]
        assert words in message

    def test_oversized_length_fails_before_the_payload(self) -> None:
        # The declared length alone is refused: nothing that large is ever buffered.
        dec = Decoder(max_payload=1024)
        with pytest.raises(ProtocolError, match="exceeds"):
            dec.feed(header(length=1025))

    def test_default_limit_refuses_more_than_4_gib(self) -> None:
        with pytest.raises(ProtocolError, match="exceeds"):
            Decoder().feed(header(length=(4 << 30) + 1))

    @FUZZ
    @given(
        magic=st.binary(min_size=2, max_size=2),
        version=st.integers(0, 255),
        kind=st.integers(0, 255),
        codec=st.integers(0, 255),
        flags=st.integers(0, 255),
    )
    def test_any_invalid_header_is_refused(
        self, magic: bytes, version: int, kind: int, codec: int, flags: int, pipe_end: int
    ) -> None:
        assume(
            not (magic == MAGIC and version == VERSION and kind < 2 and codec < 2 and flags == 0)
        )
        fd = os.dup(pipe_end)
        expect_protocol_error([(header(magic, version, kind, codec, flags, 1, 0), [fd])])


class TestGarbage:
    """Arbitrary bytes and descriptors: only ProtocolError, and no descriptor leaks."""

    @FUZZ
    @given(
        chunks=st.lists(
            st.tuples(
                st.one_of(
                    st.binary(max_size=64),
                    # Bias towards almost-valid headers so the fuzzer gets past the magic.
                    st.builds(
                        lambda k, c, n, ln, tail: (
                            HEADER.pack(MAGIC, VERSION, k, c, 0, n, ln) + tail
                        ),
                        st.integers(0, 2),
                        st.integers(0, 2),
                        st.integers(0, 4),
                        st.integers(0, 40),
                        st.binary(max_size=40),
                    ),
                ),
                st.integers(0, 3),
            ),
            max_size=8,
        )
    )
    def test_garbage_raises_only_protocol_error(
        self, chunks: list[tuple[bytes, int]], pipe_end: int
    ) -> None:
        before = open_fd_count()
        data = [c for c, _ in chunks]
        chunk_fds = [[os.dup(pipe_end) for _ in range(n)] for _, n in chunks]
        all_fds = [fd for fds in chunk_fds for fd in fds]
        dec = Decoder(max_payload=4096)
        frames, _error = feed_all(dec, data, chunk_fds)
        dec.close()
        assert_no_leak(all_fds, frames)
        assert open_fd_count() == before

    @FUZZ
    @given(data=st.binary(min_size=1, max_size=200))
    def test_random_bytes_never_crash(self, data: bytes) -> None:
        dec = Decoder(max_payload=4096)
        try:
            dec.feed(data)
        except ProtocolError:
            pass


class TestMisplacedDescriptors:
    """Descriptors must arrive with the chunk holding the first byte of their frame."""

    def test_descriptors_with_a_frame_that_declares_none(self, pipe_end: int) -> None:
        fd = os.dup(pipe_end)
        message = expect_protocol_error([(header(length=2) + b"{}", [fd])])
        assert "without a frame" in message

    def test_descriptors_with_a_partial_frame_that_declares_none(self, pipe_end: int) -> None:
        # The chunk ends inside a frame that declares no descriptors: the error comes
        # once the frame is complete, and the early descriptor is closed then.
        fd = os.dup(pipe_end)
        wire = header(length=4) + b"abcd"
        message = expect_protocol_error([(wire[:10], [fd]), (wire[10:], [])])
        assert "declares none" in message

    def test_descriptors_before_a_frame_that_declares_none_is_complete(self, pipe_end: int) -> None:
        fd = os.dup(pipe_end)
        plain = header(length=1) + b"x"
        message = expect_protocol_error([(plain + plain[:5], [fd]), (plain[5:], [])])
        assert "declares none" in message

    @pytest.mark.parametrize(("declared", "sent"), [(1, 0), (1, 2), (2, 1), (3, 5)])
    def test_count_mismatch(self, declared: int, sent: int, pipe_end: int) -> None:
        fds = [os.dup(pipe_end) for _ in range(sent)]
        message = expect_protocol_error([(header(nfds=declared, length=1) + b"x", fds)])
        assert f"declares {declared}" in message and f"{sent} arrived" in message

    def test_count_mismatch_found_once_the_header_is_complete(self, pipe_end: int) -> None:
        fds = [os.dup(pipe_end)]
        wire = header(nfds=2, length=1) + b"x"
        expect_protocol_error([(wire[:3], fds), (wire[3:], [])])

    def test_descriptors_in_the_middle_of_a_frame(self, pipe_end: int) -> None:
        own = [os.dup(pipe_end)]
        stray = [os.dup(pipe_end), os.dup(pipe_end)]
        wire = header(nfds=1, length=100) + bytes(100)
        message = expect_protocol_error([(wire[:50], own), (wire[50:80], stray), (wire[80:], [])])
        assert "middle" in message

    def test_two_descriptor_frames_starting_in_one_chunk(self, pipe_end: int) -> None:
        # The kernel never merges two descriptor-carrying writes; a peer faking it
        # gives the first frame too many descriptors.
        fds = [os.dup(pipe_end), os.dup(pipe_end)]
        one = header(nfds=1, length=0)
        expect_protocol_error([(one + one, fds)])

    def test_error_closes_descriptors_of_frames_completed_in_the_same_chunk(
        self, pipe_end: int
    ) -> None:
        fds = [os.dup(pipe_end)]
        good = header(nfds=1, length=1) + b"x"
        expect_protocol_error([(good + b"garbage-after-the-frame!", fds)])

    def test_closed_decoder_refuses_and_closes(self, pipe_end: int) -> None:
        dec = Decoder()
        with pytest.raises(ProtocolError):
            dec.feed(b"XXXXXXXXXXXXXXXXXXXX")
        fd = os.dup(pipe_end)
        with pytest.raises(ProtocolError, match="closed"):
            dec.feed(encode_header(Kind.USER, Codec.JSON, 0, 1), [fd])
        assert not is_open(fd)

    def test_close_releases_held_descriptors(self, pipe_end: int) -> None:
        fds = [os.dup(pipe_end), os.dup(pipe_end)]
        dec = Decoder()
        assert dec.feed(header(nfds=2, length=10) + b"abc", fds) == []
        assert all(is_open(fd) for fd in fds)
        dec.close()
        assert not any(is_open(fd) for fd in fds)

    @FUZZ
    @given(plan=plans(min_frames=1), data=st.data())
    def test_misattached_descriptors_fail_cleanly(
        self, plan: Plan, data: st.DataObject, pipe_end: int
    ) -> None:
        """Mutate a valid attachment so it is invalid: always ProtocolError, no leak."""
        nchunks = len(plan.chunks)
        mutation = data.draw(st.sampled_from(["extra", "missing", "moved"]))
        counts = [plan.specs[o].nfds if o is not None else 0 for o in plan.owner]
        if mutation == "extra":
            i = data.draw(st.integers(0, nchunks - 1))
            counts[i] += data.draw(st.integers(1, 3))
        elif mutation == "missing":
            owners = [i for i, o in enumerate(plan.owner) if o is not None]
            assume(owners)
            i = data.draw(st.sampled_from(owners))
            counts[i] -= data.draw(st.integers(1, counts[i]))
        else:
            owners = [i for i, o in enumerate(plan.owner) if o is not None]
            assume(owners and nchunks > 1)
            i = data.draw(st.sampled_from(owners))
            j = data.draw(st.integers(0, nchunks - 1).filter(lambda j: j != i))
            counts[j] += counts[i]
            counts[i] = 0
        chunk_fds = [[os.dup(pipe_end) for _ in range(n)] for n in counts]
        all_fds = [fd for fds in chunk_fds for fd in fds]
        dec = Decoder()
        frames, error = feed_all(dec, plan.chunks, chunk_fds)
        assert isinstance(error, ProtocolError)
        assert_no_leak(all_fds, frames)


# -- a real socket pair -----------------------------------------------------------------------


def inode(fd: int) -> tuple[int, int]:
    st_ = os.fstat(fd)
    return st_.st_dev, st_.st_ino


ReadChunk = Callable[[socket.socket], tuple["bytes | memoryview", list[int]]]


@pytest.fixture
def read_chunk() -> ReadChunk:
    """Read a chunk as the kernel delivers it, with its descriptors."""
    return lambda sock: recv_chunk(sock, READ_SIZE)


class TestSocketPair:
    """Frames written by the worker's channel and read as the kernel delivers them."""

    @pytest.fixture(autouse=True)
    def _reader(self, read_chunk: ReadChunk) -> None:
        self.read_chunk = read_chunk

    def transfer(self, frames: list[tuple[bytes, list[int]]]) -> list[Frame]:
        """Send ``frames`` with ThreadChannel.send from a thread; read them back."""
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel = ThreadChannel(left, lambda frame: None, lambda exc: None)
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for payload, fds in frames:
                    channel.send(Kind.USER, Codec.ADVANCED, payload, fds)
            except BaseException as exc:  # reported by the reader below
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        dec = Decoder()
        got: list[Frame] = []
        try:
            right.settimeout(10)
            while len(got) < len(frames):
                data, fds = self.read_chunk(right)
                assert data, "writer hung up early"
                got += dec.feed(data, fds)
        finally:
            thread.join(10)
            dec.close()
            left.close()
            right.close()
        assert not errors
        return got

    def test_one_mebibyte_frame_with_descriptors(self) -> None:
        r, w = os.pipe()
        payload = os.urandom(1 << 20)
        before = open_fd_count()
        got = self.transfer([(payload, [r, w]), (b"after", [])])
        assert len(got) == 2
        big = got[0]
        assert big.payload == payload and len(big.fds) == 2
        assert [inode(fd) for fd in big.fds] == [inode(r), inode(w)]
        # The received write end works: what goes in comes out of the original pipe.
        os.write(big.fds[1], b"ping")
        assert os.read(r, 4) == b"ping"
        assert got[1] == Frame(Kind.USER, Codec.ADVANCED, b"after", [])
        close_all(big.fds)
        assert open_fd_count() == before
        close_all([r, w])

    def test_many_descriptor_frames_back_to_back(self) -> None:
        pipes = [os.pipe() for _ in range(20)]
        before = open_fd_count()
        sent: list[tuple[bytes, list[int]]] = []
        for i in range(400):
            r, w = pipes[i % len(pipes)]
            nfds = i % 4  # mixes frames with 0..3 descriptors
            sent.append((struct.pack("!I", i) * (1 + i % 7), [r, w, r][:nfds]))
        got = self.transfer(sent)
        assert [f.payload for f in got] == [p for p, _ in sent]
        for frame, (_, fds) in zip(got, sent, strict=True):
            assert [inode(fd) for fd in frame.fds] == [inode(fd) for fd in fds]
            close_all(frame.fds)
        assert open_fd_count() == before
        for r, w in pipes:
            close_all([r, w])

    def test_channel_refuses_more_than_max_fds(self) -> None:
        left, right = socket.socketpair()
        channel = ThreadChannel(left, lambda frame: None, lambda exc: None)
        try:
            with pytest.raises(ValueError, match="at most"):
                channel.send(Kind.USER, Codec.JSON, b"", [left.fileno()] * (MAX_FDS + 1))
        finally:
            left.close()
            right.close()


class _StepReactor:
    """Just enough of the primary's reactor to drive a LoopChannel by hand."""

    def __init__(self) -> None:
        self.writers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        pass

    def remove_reader(self, fd: int) -> None:
        pass

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self.writers[fd] = callback

    def remove_writer(self, fd: int) -> None:
        self.writers.pop(fd, None)

    def post(self, callback: Callable[..., object], *args: object) -> None:
        callback(*args)


def test_loop_channel_queues_large_frames_and_descriptors_in_order() -> None:
    # Large frames go out as header and payload views, resumed wherever the socket
    # stopped taking them; frames queued behind them, with descriptors, keep their order.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reactor = _StepReactor()
    channel = LoopChannel(left, reactor, lambda frame: None, lambda exc: None)
    r, w = os.pipe()
    sent = [
        (os.urandom(3 << 20), []),
        (b"small", [r]),
        (os.urandom(1 << 20) + b"end", [r, w]),
        (b"x" * 70_000, []),
    ]
    done: list[BaseException | None] = []
    for payload, fds in sent:
        assert channel.send(Kind.USER, Codec.ADVANCED, payload, fds, done.append)
    dec = Decoder()
    got: list[Frame] = []
    right.setblocking(False)
    try:
        while len(got) < len(sent):
            for writer in list(reactor.writers.values()):
                writer()
            try:
                data, fds = recv_chunk(right, READ_SIZE)
            except BlockingIOError:
                continue
            got += dec.feed(data, fds)
        assert [f.payload for f in got] == [p for p, _ in sent]
        assert [[inode(fd) for fd in f.fds] for f in got] == [
            [inode(fd) for fd in fds] for _, fds in sent
        ]
        assert done == [None] * len(sent) and not reactor.writers
    finally:
        for frame in got:
            close_all(frame.fds)
        dec.close()
        channel.close()
        right.close()
        close_all([r, w])


def test_header_layout() -> None:
    """The header is the documented 16 bytes, big-endian."""
    raw = encode_header(Kind.USER, Codec.ADVANCED, 0x0102030405060708, 3)
    assert HEADER_SIZE == 16
    assert raw == b"PC\x01\x01\x01\x00\x00\x03\x01\x02\x03\x04\x05\x06\x07\x08"


# -- the channels' hot path: a read holding exactly one user frame ----------------------------

Delivered = tuple[str, Kind, Codec, bytes, int]


def expected_delivery(plan: Plan, codec: Codec, fast: bool) -> list[Delivered]:
    """What the channel must hand out for ``plan``, in order: the user frames in its
    codec without descriptors to ``on_user`` (when it has one), the rest as frames."""
    out: list[Delivered] = []
    for s in plan.specs:
        to_user = fast and s.kind is Kind.USER and s.codec is codec and not s.nfds
        out.append(("user" if to_user else "frame", s.kind, s.codec, s.payload, s.nfds))
    return out


class _Collector:
    """The channel's callbacks: everything delivered, in order, descriptors checked."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.got: list[Delivered] = []
        self.closed: list[BaseException | None] = []
        self.lock = threading.Lock()

    def on_user(self, payload: bytes | bytearray) -> None:
        with self.lock:
            self.got.append(("user", Kind.USER, self.codec, bytes(payload), 0))

    def on_frame(self, frame: Frame) -> None:
        assert all(is_open(fd) for fd in frame.fds)
        close_all(frame.fds)
        with self.lock:
            self.got.append(("frame", frame.kind, frame.codec, frame.payload, len(frame.fds)))

    def on_close(self, exc: BaseException | None) -> None:
        self.closed.append(exc)


def write_chunks(sock: socket.socket, plan: Plan, pipe_end: int) -> None:
    """Write the plan's chunks, each with the descriptors of the frame starting in it."""
    for chunk, owner in zip(plan.chunks, plan.owner, strict=True):
        fds = [os.dup(pipe_end) for _ in range(plan.specs[owner].nfds)] if owner is not None else []
        try:
            sock.sendmsg([chunk], ancillary_for(fds))
        finally:
            close_all(fds)  # the kernel holds its own references until they are read


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (SIOCINQ)."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


class TestChannelHotPath:
    """Both channels deliver any valid stream exactly, whichever path each read takes.

    Each chunk is written on its own and read before the next one, so a chunk that
    holds exactly one frame takes the hot path (no decoder) and every other shape the
    decoder: a frame split over reads, several frames in one read, descriptors.
    """

    @FUZZ
    @given(plan=plans(), codec=st.sampled_from(Codec), fast=st.booleans(), partial=st.booleans())
    def test_loop_channel(
        self, plan: Plan, codec: Codec, fast: bool, partial: bool, pipe_end: int
    ) -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sink = _Collector(codec)
        channel = LoopChannel(
            right,
            _StepReactor(),
            sink.on_frame,
            sink.on_close,
            on_user=sink.on_user if fast else None,
            codec=codec,
        )
        before = open_fd_count()
        try:
            for chunk, owner in zip(plan.chunks, plan.owner, strict=True):
                one = Plan(plan.specs, [chunk], [owner], plan.starts)
                write_chunks(left, one, pipe_end)
                channel._readable()
            assert sink.got == expected_delivery(plan, codec, fast)
            assert not sink.closed
        finally:
            channel.close()
            left.close()
        assert open_fd_count() <= before

    @FUZZ
    @given(plan=plans(), codec=st.sampled_from(Codec), fast=st.booleans())
    def test_thread_channel(self, plan: Plan, codec: Codec, fast: bool, pipe_end: int) -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sink = _Collector(codec)
        channel = ThreadChannel(
            right,
            sink.on_frame,
            sink.on_close,
            on_user=sink.on_user if fast else None,
            codec=codec,
        )
        channel.start()
        try:
            for chunk, owner in zip(plan.chunks, plan.owner, strict=True):
                write_chunks(left, Plan(plan.specs, [chunk], [owner], plan.starts), pipe_end)
                deadline = 200
                while unread_bytes(right) and deadline:
                    threading.Event().wait(0.005)
                    deadline -= 1
            left.close()
            channel.thread.join(10)
            assert not channel.thread.is_alive()
            assert sink.got == expected_delivery(plan, codec, fast)
            assert sink.closed == [None]
        finally:
            left.close()
            channel.close()

    @pytest.mark.parametrize("kind", ["loop", "thread"])
    def test_hot_path_enforces_the_size_limit(self, kind: str) -> None:
        # A frame alone in a read, over max_message_size: a protocol error, never
        # handed to the listener, even though it fits the read buffer.
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sink = _Collector(Codec.JSON)
        payload = b'"' + b"x" * 98 + b'"'
        frame = encode_header(Kind.USER, Codec.JSON, len(payload)) + payload
        if kind == "loop":
            loop_channel = LoopChannel(
                right, _StepReactor(), sink.on_frame, sink.on_close, 64, on_user=sink.on_user
            )
            left.sendall(frame)
            loop_channel._readable()
            assert loop_channel.closed
        else:
            thread_channel = ThreadChannel(
                right, sink.on_frame, sink.on_close, 64, on_user=sink.on_user
            )
            thread_channel.start()
            left.sendall(frame)
            thread_channel.thread.join(10)
        left.close()
        assert sink.got == []
        assert len(sink.closed) == 1 and isinstance(sink.closed[0], ProtocolError)

    def test_send_user_writes_what_send_writes(self) -> None:
        # The hot path's precomputed header is the documented one.
        for codec in Codec:
            left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            thread_channel = ThreadChannel(left, lambda f: None, lambda e: None, codec=codec)
            thread_channel.send_user(b"[1]")
            assert right.recv(100) == encode_header(Kind.USER, codec, 3) + b"[1]"
            loop_channel = LoopChannel(
                right, _StepReactor(), lambda f: None, lambda e: None, codec=codec
            )
            assert loop_channel.send_user(b"{}")
            assert left.recv(100) == encode_header(Kind.USER, codec, 2) + b"{}"
            loop_channel.close()
            assert not loop_channel.send_user(b"{}")  # closed: False, as send() says
            left.close()


class TestLargeMessagesOnTheThreadChannel:
    """A worker reads a large message's rest straight into a buffer of its size."""

    def run_channel(
        self, writes: Callable[[socket.socket], None], codec: Codec = Codec.ADVANCED
    ) -> _Collector:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sink = _Collector(codec)
        channel = ThreadChannel(
            right, sink.on_frame, sink.on_close, on_user=sink.on_user, codec=codec
        )
        channel.start()
        writer = threading.Thread(target=writes, args=(left,))
        writer.start()
        writer.join(10)
        left.close()
        channel.thread.join(10)
        assert not channel.thread.is_alive()
        return sink

    def test_large_messages_arrive_whole_and_in_order_with_descriptors_between(self) -> None:
        big, middle = os.urandom(3 << 20), os.urandom(300 << 10)
        r, w = os.pipe()
        before = open_fd_count()

        def writes(sock: socket.socket) -> None:
            sock.sendall(encode_header(Kind.USER, Codec.ADVANCED, len(big)) + big)
            sock.sendmsg(
                [encode_header(Kind.USER, Codec.ADVANCED, 2, 2) + b"fd"], ancillary_for([r, w])
            )
            sock.sendall(encode_header(Kind.USER, Codec.ADVANCED, len(middle)) + middle)
            sock.sendall(encode_header(Kind.INTERNAL, Codec.JSON, len(middle)) + middle)
            sock.sendall(encode_header(Kind.USER, Codec.ADVANCED, 1) + b"!")

        sink = self.run_channel(writes)
        assert sink.got == [
            ("user", Kind.USER, Codec.ADVANCED, big, 0),
            ("frame", Kind.USER, Codec.ADVANCED, b"fd", 2),
            ("user", Kind.USER, Codec.ADVANCED, middle, 0),
            ("frame", Kind.INTERNAL, Codec.JSON, middle, 0),
            ("user", Kind.USER, Codec.ADVANCED, b"!", 0),
        ]
        assert sink.closed == [None]
        close_all([r, w])
        assert open_fd_count() <= before

    def test_a_peer_that_ends_inside_a_large_message_ends_the_channel(self) -> None:
        def writes(sock: socket.socket) -> None:
            sock.sendall(encode_header(Kind.USER, Codec.ADVANCED, 1 << 20) + b"x" * 1000)

        sink = self.run_channel(writes)
        assert sink.got == []
        assert sink.closed == [None]

    def test_descriptors_inside_a_large_message_are_a_protocol_error(self) -> None:
        r, w = os.pipe()
        before = open_fd_count()

        def writes(sock: socket.socket) -> None:
            sock.sendall(encode_header(Kind.USER, Codec.ADVANCED, 1 << 20) + b"x" * 1000)
            threading.Event().wait(0.2)  # the head is read alone
            sock.sendmsg([b"y" * 1000], ancillary_for([r, w]))

        sink = self.run_channel(writes)
        assert sink.got == []
        assert len(sink.closed) == 1 and isinstance(sink.closed[0], ProtocolError)
        close_all([r, w])
        assert open_fd_count() <= before


class TestLargeMessagesOnTheLoopChannel:
    """The primary reads a large message's rest into its own buffer over several wake-ups."""

    def channel(self) -> tuple[socket.socket, LoopChannel, _Collector]:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sink = _Collector(Codec.ADVANCED)
        channel = LoopChannel(
            right,
            _StepReactor(),
            sink.on_frame,
            sink.on_close,
            on_user=sink.on_user,
            codec=Codec.ADVANCED,
        )
        return left, channel, sink

    def test_a_large_message_split_over_wake_ups_then_the_next_frames(self) -> None:
        big = os.urandom(1 << 20)
        left, channel, sink = self.channel()
        r, w = os.pipe()
        before = open_fd_count()
        try:
            frame = encode_header(Kind.USER, Codec.ADVANCED, len(big)) + big
            for start in range(0, len(frame), 100_000):  # one wake-up per piece
                left.sendall(frame[start : start + 100_000])
                channel._readable()
                if start + 100_000 < len(frame):
                    assert sink.got == []
            assert sink.got == [("user", Kind.USER, Codec.ADVANCED, big, 0)]
            left.sendmsg(
                [encode_header(Kind.USER, Codec.ADVANCED, 2, 2) + b"fd"], ancillary_for([r, w])
            )
            left.sendall(encode_header(Kind.USER, Codec.ADVANCED, 1) + b"!")
            channel._readable()
            assert sink.got[1:] == [
                ("frame", Kind.USER, Codec.ADVANCED, b"fd", 2),
                ("user", Kind.USER, Codec.ADVANCED, b"!", 0),
            ]
            assert not sink.closed
        finally:
            channel.close()
            left.close()
            close_all([r, w])
        assert open_fd_count() <= before

    def test_descriptors_or_an_end_inside_a_large_message(self) -> None:
        r, w = os.pipe()
        before = open_fd_count()
        for ending in ("descriptors", "end"):
            left, channel, sink = self.channel()
            try:
                left.sendall(encode_header(Kind.USER, Codec.ADVANCED, 1 << 20) + b"x" * 1000)
                channel._readable()
                if ending == "descriptors":
                    left.sendmsg([b"y" * 1000], ancillary_for([r, w]))
                else:
                    left.close()
                channel._readable()
                assert sink.got == []
                assert len(sink.closed) == 1 and channel.closed
                if ending == "descriptors":
                    assert isinstance(sink.closed[0], ProtocolError)
                else:
                    assert sink.closed[0] is None
            finally:
                channel.close()
                left.close()
        close_all([r, w])
        assert open_fd_count() <= before
