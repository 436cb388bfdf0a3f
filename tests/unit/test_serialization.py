"""Message codecs: JSON and "advanced" round trips, the allow-list, hostile pickles.

The hostile payloads are written opcode by opcode. Each one would create a marker
file if a stock unpickler ran it (checked against the stock unpickler in a separate
interpreter), so "runs no code" is observed, not assumed.
"""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import math
import pathlib
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycluster._ipc.framing import Codec
from pycluster._ipc.messages import Act, decode_internal, encode_internal
from pycluster._ipc.serialization import (
    AllowList,
    DecodeError,
    decode,
    encode,
    make_json,
    message_codec,
)

PROPERTY = settings(max_examples=150, deadline=None)
Decoder = Callable[[bytes], Any]


@dataclasses.dataclass
class Point:
    """A user type: refused until allowed."""

    x: int
    y: int


class Outer:
    """Holds a nested class, so allow-listing by qualified name is exercised."""

    @dataclasses.dataclass
    class Inner:
        label: str


@dataclasses.dataclass
class Node:
    """A user type that can take part in a reference cycle."""

    name: str
    next: Node | None = None


def advanced(value: Any, allow: AllowList | None = None) -> Any:
    """Encode with "advanced" and decode as the primary does (against an allow-list)."""
    return decode(encode(value, Codec.ADVANCED), Codec.ADVANCED, allow or AllowList())


def assert_same(a: Any, b: Any) -> None:
    """Equal values of exactly the same types, all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, (list, tuple, collections.deque)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# -- JSON ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


class TestJson:
    """The default codec: any JSON value round-trips unchanged."""

    @PROPERTY
    @given(value=json_values)
    def test_round_trip(self, value: Any) -> None:
        payload = encode(value, Codec.JSON)
        assert isinstance(payload, bytes)
        assert_same(decode(payload, Codec.JSON, AllowList()), value)
        assert_same(decode(payload, Codec.JSON, None), value)

    def test_internal_looking_dict_is_plain_data(self) -> None:
        value = {"act": "disconnect", "seq": 1, "cmd": "NODE_CLUSTER"}
        assert decode(encode(value, Codec.JSON), Codec.JSON, None) == value

    def test_non_finite_floats(self) -> None:
        out = decode(encode([math.inf, -math.inf, math.nan], Codec.JSON), Codec.JSON, None)
        assert out[:2] == [math.inf, -math.inf] and math.isnan(out[2])

    @pytest.mark.parametrize(
        "payload", [b"", b"{", b"\xff\xfe", b"[1,]", b"nul", b"[" * 100_000 + b"]" * 100_000]
    )
    def test_malformed_is_decode_error(self, payload: bytes) -> None:
        with pytest.raises(DecodeError):
            decode(payload, Codec.JSON, AllowList())

    @PROPERTY
    @given(payload=st.binary(max_size=100))
    def test_any_bytes_give_a_value_or_decode_error(self, payload: bytes) -> None:
        try:
            decode(payload, Codec.JSON, AllowList())
        except DecodeError:
            pass

    @pytest.mark.parametrize(
        ("value", "name"),
        [
            ({1, 2}, "set"),
            (Point(1, 2), "Point"),
            (b"bytes", "bytes"),
            ({"nested": [object()]}, "object"),
        ],
    )
    def test_unencodable_names_the_type(self, value: Any, name: str) -> None:
        with pytest.raises(TypeError, match=name):
            encode(value, Codec.JSON)

    def test_circular_structure_is_type_error(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        with pytest.raises(TypeError, match="(?i)circular"):
            encode(loop, Codec.JSON)

    @PROPERTY
    @given(value=json_values)
    def test_fast_path_writes_what_json_writes(self, value: Any) -> None:
        # The C encoder and scanner built once must agree with the stock codec.
        fast_encode, fast_decode = make_json()
        stock_encode, stock_decode = make_json(accelerated=False)
        payload = fast_encode(value)
        assert payload == stock_encode(value)
        assert payload == json.dumps(value, separators=(",", ":")).encode()
        assert_same(fast_decode(payload.decode()), stock_decode(payload.decode()))

    @pytest.mark.parametrize("text", [" [1, 2] ", '\n{"a": 1}\t', "1 ", " null"])
    def test_json_with_whitespace_around_decodes(self, text: str) -> None:
        assert decode(text.encode(), Codec.JSON, None) == json.loads(text)

    @pytest.mark.parametrize("text", ["[1] x", "[1][2]", "  "])
    def test_trailing_data_is_decode_error(self, text: str) -> None:
        with pytest.raises(DecodeError):
            decode(text.encode(), Codec.JSON, None)

    def test_internal_messages_are_json(self) -> None:
        for act in Act:
            assert json.loads(encode_internal(act)) == {"act": act.value}
        assert decode_internal(encode_internal(Act.CLOSE, handle=3)) == (
            Act.CLOSE,
            {"handle": 3, "act": "close"},
        )


# -- advanced: the default allow-list ---------------------------------------------------------

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.binary(max_size=20).map(bytearray),
    st.complex_numbers(allow_nan=False),
    st.dates(),
    st.times(),
    st.datetimes(),
    # Only fixed-offset zones are on the default list (zoneinfo.ZoneInfo is not).
    st.builds(
        dt.datetime.replace,
        st.datetimes(),
        tzinfo=st.builds(
            dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23))
        ),
    ),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.uuids(),
    st.text(alphabet="abc/", max_size=12).map(pathlib.PurePosixPath),
    # A UNC name with an empty share (r"\\a\") does not survive its own str() or
    # pickle in CPython; such a path cannot round-trip through any serialization.
    st.text(alphabet="abc\\", max_size=12)
    .map(pathlib.PureWindowsPath)
    .filter(lambda p: pathlib.PureWindowsPath(str(p)) == p),
    st.text(alphabet="abc/", max_size=12).map(pathlib.Path),
)
hashables = st.one_of(st.integers(), st.text(max_size=10), st.binary(max_size=10), st.uuids())
advanced_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(hashables, children, max_size=4),
        st.dictionaries(hashables, children, max_size=4).map(collections.OrderedDict),
        st.lists(children, max_size=4).map(collections.deque),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=20,
)


class TestAdvancedDefaults:
    """Every type API.md lists round-trips with no allow_types() call."""

    @PROPERTY
    @given(value=advanced_values)
    def test_round_trip(self, value: Any) -> None:
        assert_same(advanced(value), value)

    def test_each_documented_type(self) -> None:
        tz = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
        values = [
            None,
            True,
            12345678901234567890,
            1.5,
            "text",
            [1, "a"],
            {"k": [1]},
            (1, 2),
            {1, 2},
            frozenset({3}),
            b"\x00\xff",
            bytearray(b"ab"),
            1 + 2j,
            dt.date(2024, 2, 29),
            dt.time(23, 59, 1, 5, tzinfo=tz),
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=tz),
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
            dt.timedelta(days=-3, microseconds=7),
            tz,
            decimal.Decimal("-1.50E+7"),
            fractions.Fraction(-22, 7),
            uuid.uuid4(),
            collections.OrderedDict([("b", 1), ("a", 2)]),
            collections.deque([1, 2, 3], maxlen=5),
            pathlib.PurePosixPath("/etc/x"),
            pathlib.PureWindowsPath(r"C:\x"),
            pathlib.Path("relative/p"),
        ]
        for value in values:
            out = advanced(value)
            assert type(out) is type(value)
            assert out == value
        assert advanced(collections.deque([1], maxlen=5)).maxlen == 5

    def test_circular_references_survive(self) -> None:
        lst: list[Any] = [1]
        lst.append(lst)
        d: dict[str, Any] = {}
        d["self"] = d
        od: collections.OrderedDict[str, Any] = collections.OrderedDict()
        od["me"] = od
        dq: collections.deque[Any] = collections.deque()
        dq.append(dq)
        out_lst, out_d, out_od, out_dq = advanced((lst, d, od, dq))
        assert out_lst[1] is out_lst
        assert out_d["self"] is out_d
        assert out_od["me"] is out_od
        assert out_dq[0] is out_dq

    def test_shared_references_stay_shared(self) -> None:
        shared = [1, 2]
        out = advanced({"a": shared, "b": shared, "t": (shared,)})
        assert out["a"] is out["b"] is out["t"][0]

    def test_large_bytes(self) -> None:
        blob = bytes(range(256)) * 8192
        assert advanced(blob) == blob


# -- advanced: user classes ------------------------------------------------------------------


class TestAllowList:
    """User classes are refused, naming them, until AllowList.add()."""

    def test_unknown_class_is_refused_by_name(self) -> None:
        with pytest.raises(DecodeError) as info:
            advanced(Point(1, 2))
        message = str(info.value)
        assert f"{__name__}.Point" in message
        assert "allow_types" in message

    def test_allowed_after_add(self) -> None:
        allow = AllowList()
        allow.add(Point)
        assert advanced([Point(1, 2)], allow) == [Point(1, 2)]

    def test_nested_class_by_qualified_name(self) -> None:
        allow = AllowList()
        with pytest.raises(DecodeError, match="Outer.Inner"):
            advanced(Outer.Inner("x"), allow)
        allow.add(Outer.Inner)
        assert advanced(Outer.Inner("x"), allow) == Outer.Inner("x")

    def test_allowing_one_class_does_not_allow_its_fields(self) -> None:
        allow = AllowList()
        allow.add(Node)
        with pytest.raises(DecodeError, match="Point"):
            advanced(Node("a", Point(1, 2)), allow)  # type: ignore[arg-type]

    def test_user_objects_in_a_cycle(self) -> None:
        allow = AllowList()
        allow.add(Node)
        a = Node("a")
        b = Node("b", a)
        a.next = b
        out = advanced(a, allow)
        assert out.next.next is out and out.next.name == "b"

    def test_lists_are_independent(self) -> None:
        first, second = AllowList(), AllowList()
        first.add(Point)
        advanced(Point(0, 0), first)
        with pytest.raises(DecodeError):
            advanced(Point(0, 0), second)

    @pytest.mark.parametrize("bad", [Point(1, 2), "Point", 3, None])
    def test_add_takes_classes_only(self, bad: Any) -> None:
        with pytest.raises(TypeError):
            AllowList().add(bad)

    def test_without_allow_list_anything_decodes(self) -> None:
        # The worker trusts its primary: no allow-list on that side.
        assert decode(encode(Point(3, 4), Codec.ADVANCED), Codec.ADVANCED, None) == Point(3, 4)


# -- advanced: hostile payloads --------------------------------------------------------------


def text0(value: str) -> bytes:
    """A protocol-0 unicode argument (the ``V`` opcode)."""
    return b"V" + value.encode("raw_unicode_escape") + b"\n"


def short_unicode(value: str) -> bytes:
    """A SHORT_BINUNICODE argument (protocol 4+)."""
    raw = value.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def call_global0(module: str, name: str, *args: str) -> bytes:
    """``module.name(*args)`` as GLOBAL + MARK + args + TUPLE + REDUCE."""
    return b"c" + f"{module}\n{name}\n".encode() + b"(" + b"".join(map(text0, args)) + b"tR."


def call_stack_global(module: str, name: str, *args: str) -> bytes:
    """``module.name(*args)`` as protocol-4 STACK_GLOBAL + REDUCE."""
    body = short_unicode(module) + short_unicode(name) + b"\x93"
    body += b"(" + b"".join(map(short_unicode, args)) + b"t" + b"R."
    return b"\x80\x04" + body


class Popener:
    """Pickles as a call to ``subprocess.Popen`` (only ever pickled, never run here)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (self.argv,))


def hostile_payloads(marker: Path) -> dict[str, bytes]:
    """Payloads that each create ``marker`` when a stock unpickler loads them."""
    touch = f"touch {marker}"
    create = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system via REDUCE": call_global0("os", "system", touch),
        "posix.system via REDUCE": call_global0("posix", "system", touch),
        "builtins.eval via GLOBAL": call_global0("builtins", "eval", create),
        "__builtin__.exec via GLOBAL": call_global0("__builtin__", "exec", create),
        "builtins.eval via STACK_GLOBAL": call_stack_global("builtins", "eval", create),
        "os.system via INST": b"(" + text0(touch) + b"ios\nsystem\n.",
        "getattr chain to os.system": (
            b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n("
            + text0("os")
            + b"tR"
            + text0("system")
            + b"tR("
            + text0(touch)
            + b"tR."
        ),
        "subprocess.Popen via __reduce__": pickle.dumps(
            Popener(["touch", str(marker)]), protocol=5
        ),
        "subprocess.Popen via protocol 2": pickle.dumps(
            Popener(["touch", str(marker)]), protocol=2
        ),
    }


STOCK_LOADER = """
import pickle, sys
obj = pickle.loads(sys.stdin.buffer.read())
if hasattr(obj, "wait"):
    obj.wait()
"""


def test_hostile_payloads_are_real(tmp_path: Path) -> None:
    """Control: each payload does create the marker under the stock unpickler."""
    marker = tmp_path / "pwned"
    for name, payload in hostile_payloads(marker).items():
        subprocess.run([sys.executable, "-c", STOCK_LOADER], input=payload, check=True, timeout=20)
        assert marker.exists(), name
        marker.unlink()


class TestHostilePickles:
    """Crafted pickles raise DecodeError and run nothing.

    Both ways the primary decodes: the general ``decode`` and the per-channel codec
    of the hot path, which looks up the unpickler and copyreg's cache only once.
    """

    @pytest.fixture(scope="class", params=["decode", "message_codec"])
    @classmethod
    def load(cls, request: pytest.FixtureRequest) -> Decoder:
        if request.param == "decode":
            return lambda payload: decode(payload, Codec.ADVANCED, AllowList())
        return message_codec(Codec.ADVANCED, AllowList())[1]

    @pytest.fixture
    def marker(self, tmp_path: Path) -> Iterator[Path]:
        path = tmp_path / "pwned"
        yield path
        assert not path.exists(), "a hostile payload ran"

    def test_code_execution_payloads_are_refused(self, load: Decoder, marker: Path) -> None:
        for name, payload in hostile_payloads(marker).items():
            with pytest.raises(DecodeError, match="refusing") as info:
                load(payload)
            assert "not an allowed type" in str(info.value), name
            assert not marker.exists(), name

    def test_refusal_names_the_global(self, load: Decoder, marker: Path) -> None:
        with pytest.raises(DecodeError, match=r"os\.system"):
            load(call_global0("os", "system", "true"))
        with pytest.raises(DecodeError, match=r"subprocess\.Popen"):
            load(pickle.dumps(Popener(["true"])))

    @pytest.mark.parametrize(
        "payload",
        [b"\x80\x05\x82\x7f)R.", b"\x80\x05\x83\xff\x7f)R.", b"\x80\x05\x84\xff\xff\xff\x00)R."],
        ids=["EXT1", "EXT2", "EXT4"],
    )
    def test_unregistered_extension_codes(
        self, load: Decoder, payload: bytes, marker: Path
    ) -> None:
        with pytest.raises(DecodeError):
            load(payload)

    @pytest.fixture
    def extension(self) -> Iterator[int]:
        """os.getcwd registered as a copyreg extension code, unregistered afterwards."""
        code = 0x7FFF_FF01
        copyreg.add_extension("os", "getcwd", code)
        try:
            yield code
        finally:
            copyreg.remove_extension("os", "getcwd", code)

    def test_registered_extension_still_checked(
        self, load: Decoder, extension: int, marker: Path
    ) -> None:
        payload = b"\x80\x05\x84" + struct.pack("<I", extension) + b")R."
        with pytest.raises(DecodeError, match=r"os\.getcwd"):
            load(payload)

    def test_extension_cached_by_an_earlier_trusted_load(
        self, load: Decoder, extension: int, marker: Path
    ) -> None:
        # The C unpickler caches resolved extension codes process-wide; a code the
        # primary's own trusted unpickling resolved must still face the allow-list.
        ref = b"\x80\x05\x84" + struct.pack("<I", extension) + b"."
        pickle.loads(ref)
        payload = b"\x80\x05\x84" + struct.pack("<I", extension) + b")R."
        with pytest.raises(DecodeError, match=r"os\.getcwd"):
            load(payload)

    @pytest.mark.parametrize(
        "payload",
        [b"(" + text0("touch x") + b"P0\n.", b"\x80\x05" + short_unicode("pid") + b"Q."],
        ids=["PERSID", "BINPERSID"],
    )
    def test_persistent_ids(self, load: Decoder, payload: bytes, marker: Path) -> None:
        with pytest.raises(DecodeError, match="persistent"):
            load(payload)

    def test_huge_bytearray_via_reduce(self, load: Decoder, marker: Path) -> None:
        payload = b"cbuiltins\nbytearray\n(I1000000000000\ntR."
        with pytest.raises(DecodeError, match=r"builtins\.bytearray"):
            load(payload)

    @pytest.mark.parametrize("opcode", [b"\x96", b"\x8e"], ids=["BYTEARRAY8", "BINBYTES8"])
    def test_huge_declared_length(self, load: Decoder, opcode: bytes, marker: Path) -> None:
        payload = b"\x80\x05" + opcode + struct.pack("<Q", 1 << 62) + b"."
        with pytest.raises(DecodeError):
            load(payload)

    def test_fraction_exponent_is_not_an_amplifier(self, load: Decoder, marker: Path) -> None:
        # 30 bytes asking Fraction to compute 10**10**9 would stall the primary's
        # loop for hours; pickles of real Fractions never carry an exponent.
        payload = call_global0("fractions", "Fraction", "1e1000000000")
        start = time.monotonic()
        with pytest.raises(DecodeError):
            load(payload)
        assert time.monotonic() - start < 1

    def test_fraction_from_its_string_form_still_decodes(self, load: Decoder) -> None:
        # Python 3.10 pickles a Fraction as Fraction("n/d").
        payload = call_global0("fractions", "Fraction", "-22/7")
        assert load(payload) == fractions.Fraction(-22, 7)

    @PROPERTY
    @given(payload=st.binary(max_size=60))
    def test_any_bytes_give_a_value_or_decode_error(self, load: Decoder, payload: bytes) -> None:
        # Arbitrary bytes: never another exception type (and never a call, since
        # find_class refuses everything not allowed).
        try:
            load(b"\x80\x05" + payload)
        except DecodeError:
            pass


# -- advanced: unencodable messages ----------------------------------------------------------


def _socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


class TestAdvancedEncodeErrors:
    """encode() raises TypeError naming what cannot be sent."""

    @pytest.mark.parametrize(
        ("make", "name"),
        [
            (lambda: lambda: 1, "lambda"),
            (lambda: {"cb": lambda: 1}, "lambda"),
            (threading.Lock, "lock"),
            (lambda: [threading.RLock()], "RLock"),
            (lambda: (i for i in ()), "generator"),
        ],
        ids=["lambda", "nested-lambda", "lock", "rlock", "generator"],
    )
    def test_unpicklable(self, make: Callable[[], Any], name: str) -> None:
        with pytest.raises(TypeError, match=name):
            encode(make(), Codec.ADVANCED)

    def test_socket(self) -> None:
        with _socket() as sock, pytest.raises(TypeError, match="socket"):
            encode({"s": sock}, Codec.ADVANCED)

    def test_json_codec_message_mentions_serialization(self) -> None:
        with pytest.raises(TypeError, match="JSON"):
            encode({1, 2}, Codec.JSON)


def test_json_encoding_is_compact_utf8() -> None:
    assert encode({"a": [1, "é"]}, Codec.JSON) == json.dumps(
        {"a": [1, "é"]}, separators=(",", ":")
    ).encode("utf-8")


class TestMessageCodec:
    """The per-channel codec behaves exactly as encode() and decode()."""

    @PROPERTY
    @given(value=advanced_values)
    def test_advanced_same_as_general(self, value: Any) -> None:
        enc, dec = message_codec(Codec.ADVANCED, AllowList())
        payload = enc(value)
        assert payload == encode(value, Codec.ADVANCED)
        assert_same(dec(payload), value)
        assert_same(dec(bytearray(payload)), value)

    @PROPERTY
    @given(value=json_values)
    def test_json_same_as_general(self, value: Any) -> None:
        for allow in (AllowList(), None):
            enc, dec = message_codec(Codec.JSON, allow, use_orjson=False)
            payload = enc(value)
            assert payload == encode(value, Codec.JSON)
            assert_same(dec(payload), value)
            assert_same(dec(bytearray(payload)), value)
            fast_enc, fast_dec = message_codec(Codec.JSON, allow)
            fast = fast_enc(value)
            for codec_payload in (fast, bytearray(fast), payload):
                assert_same(fast_dec(codec_payload), value)
            assert_same(decode(fast, Codec.JSON, allow), value)

    def test_errors_are_the_general_ones(self, tmp_path: Path) -> None:
        enc, dec = message_codec(Codec.JSON, AllowList())
        with pytest.raises(TypeError, match="set"):
            enc({1, 2})
        for bad in (b"", b"{", b"\xff", b"[1] x"):
            with pytest.raises(DecodeError):
                dec(bad)
        assert dec(b" [1, 2] ") == [1, 2]
        enc, dec = message_codec(Codec.ADVANCED, AllowList())
        with pytest.raises(TypeError, match="lambda"):
            enc(lambda: 1)
        for payload in hostile_payloads(tmp_path / "pwned").values():
            with pytest.raises(DecodeError, match="refusing"):
                dec(payload)
        assert not (tmp_path / "pwned").exists()
        with pytest.raises(DecodeError):
            dec(b"\x80\x05garbage")
        allow = AllowList()
        enc, dec = message_codec(Codec.ADVANCED, allow)
        with pytest.raises(DecodeError, match="Point"):
            dec(enc(Point(1, 2)))
        allow.add(Point)  # allow_types() after the codec was made still counts
        assert dec(enc(Point(1, 2))) == Point(1, 2)


# -- JSON through orjson (the "fast" extra) ---------------------------------------------------


class Color(enum.Enum):
    """A plain enum: neither json nor orjson see a built-in type in it."""

    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    """An int enum: json writes it as an int subclass, orjson as an enum."""

    HIGH = 3


class Text(str):
    """A str subclass: orjson hands it back, json writes its text."""


Pair = collections.namedtuple("Pair", "a b")


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# What orjson would write differently, or not at all, next to plain JSON values.
edge_values = st.recursive(
    st.one_of(
        json_values,
        st.floats(),  # NaN and the infinities included
        st.integers(min_value=2**62, max_value=2**80),
        st.integers(min_value=-(2**80), max_value=-(2**62)),
        st.sampled_from(
            [Color.RED, Color.PAIR, Level.HIGH, Text("t"), uuid.UUID(int=7), "\ud800", None]
        ),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.tuples(children, children).map(lambda t: Pair(*t))
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
        | st.dictionaries(st.integers() | st.booleans(), children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3).map(collections.OrderedDict)
    ),
    max_leaves=20,
)


def _canonical(value: Any) -> Any:
    """What a JSON round trip makes of ``value``, by the json module's rules."""
    return json.loads(
        json.dumps(value, default=lambda o: o.value if isinstance(o, enum.Enum) else str(o))
    )


class TestOrjsonCodec:
    """With orjson installed, a message means what the json module would make of it."""

    def test_the_fast_path_is_taken(self) -> None:
        pytest.importorskip("orjson")
        enc, dec = message_codec(Codec.JSON, None)
        payload = enc({"cmd": "ping", "n": 1})
        assert payload.endswith(b"\n")  # orjson's mark (see _orjson_codec)
        assert dec(payload) == {"cmd": "ping", "n": 1}

    @PROPERTY
    @given(value=edge_values)
    def test_same_meaning_as_json(self, value: Any) -> None:
        try:
            expected = _canonical(value)
        except ValueError:  # a lone surrogate json writes and cannot read back as UTF-8
            expected = None
        fast_enc, fast_dec = message_codec(Codec.JSON, None)
        plain_enc, plain_dec = message_codec(Codec.JSON, None, use_orjson=False)
        fast, plain = fast_enc(value), plain_enc(value)
        for payload in (fast, plain):
            for dec in (fast_dec, plain_dec):
                got = dec(payload)
                if expected is not None:
                    assert_same(got, expected)
        assert_same(fast_dec(fast), plain_dec(plain))

    def test_deep_nesting_and_big_integers_keep_their_meaning(self) -> None:
        enc, dec = message_codec(Codec.JSON, None)
        for value in (_nested(400), [2**64, -(2**63) - 1, 10**30], {"x": math.nan, "y": math.inf}):
            assert_same(dec(enc(value)), _canonical(value))
        assert type(dec(enc(2**64))) is int

    @pytest.mark.parametrize(
        ("value", "name"),
        [
            ({1, 2}, "set"),
            (Point(1, 2), "Point"),
            (b"bytes", "bytes"),
            ({"when": dt.datetime(2024, 1, 2)}, "datetime"),
            ([object()], "object"),
        ],
    )
    def test_refuses_what_json_refuses(self, value: Any, name: str) -> None:
        enc, _ = message_codec(Codec.JSON, None)
        with pytest.raises(TypeError, match=name):
            enc(value)

    def test_circular_structure_is_type_error(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        enc, _ = message_codec(Codec.JSON, None)
        with pytest.raises(TypeError, match="(?i)circular"):
            enc(loop)

    def test_enums_and_uuids_are_their_values_everywhere(self) -> None:
        value = {"c": Color.RED, "p": Color.PAIR, "l": Level.HIGH, "u": uuid.UUID(int=7)}
        expected = {"c": "red", "p": [1, 2], "l": 3, "u": str(uuid.UUID(int=7))}
        for use_orjson in (True, False):
            enc, dec = message_codec(Codec.JSON, None, use_orjson=use_orjson)
            assert dec(enc(value)) == expected
        assert decode(encode(value, Codec.JSON), Codec.JSON, None) == expected

    @PROPERTY
    @given(payload=st.binary(max_size=60))
    def test_any_bytes_give_a_value_or_decode_error(self, payload: bytes) -> None:
        _, dec = message_codec(Codec.JSON, None)
        for candidate in (payload, payload + b"\n"):
            try:
                dec(candidate)
            except DecodeError:
                pass

    @PROPERTY
    @given(payload=st.binary(max_size=60))
    def test_unmarked_payloads_decode_as_json_does(self, payload: bytes) -> None:
        payload = payload.rstrip(b"\n")
        _, fast_dec = message_codec(Codec.JSON, None)
        _, plain_dec = message_codec(Codec.JSON, None, use_orjson=False)
        try:
            expected = plain_dec(payload)
        except DecodeError:
            with pytest.raises(DecodeError):
                fast_dec(payload)
        else:
            assert_same(fast_dec(payload), expected)
