"""Message codecs: JSON, and "advanced" (pickle) decoded against an allow-list.

"advanced" uses pickle protocol 5 because it is fast, keeps shared and circular
references, and carries bytes without copies. Pickle trusts its input completely,
so decoding never uses the stock unpickler where the peer may be hostile (a worker
running with a lowered ``uid`` talking to the primary): :class:`AllowList` resolves
only the globals it was told about, so a crafted payload cannot reach ``os.system``
or any other callable. Most built-in containers (tuple, set, frozenset, bytes,
bytearray) are pickle opcodes, not globals, and need no entry at all.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any

from pycluster._ipc.framing import Codec

JsonEncode = Callable[[Any], bytes]
JsonDecode = Callable[[str], Any]


def _json_parts(accelerated: bool) -> tuple[Any, Any, Any, Any]:
    """The stock encoder and decoder, and the C encoder and scanner when available."""
    import json
    from json import encoder, scanner

    stock = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=_json_default)
    decoder = json.JSONDecoder()
    make_encoder = getattr(encoder, "c_make_encoder", None)
    make_scanner = getattr(scanner, "c_make_scanner", None)
    c_encode = c_scan = None
    if accelerated and make_encoder is not None and make_scanner is not None:
        try:
            c_encode = make_encoder(
                None,  # markers: no circular check, see make_json
                stock.default,
                encoder.encode_basestring_ascii,  # what ensure_ascii=True uses
                None,  # indent
                ":",
                ",",
                False,  # sort_keys
                False,  # skipkeys
                True,  # allow_nan
            )
            c_scan = make_scanner(decoder)
        except TypeError:  # a signature this code does not know: use the stock paths
            c_encode = c_scan = None
    return stock, decoder.decode, c_encode, c_scan


def _json_default(value: Any) -> Any:
    """What the JSON codec writes for the two types beyond ``json``'s own that orjson
    writes too: an enum member as its value, a UUID as its text. Both encoders then
    take the same messages and give them the same meaning.
    """
    if isinstance(value, Enum):
        return value.value
    uuid = sys.modules.get("uuid")  # a program that never imported it has no UUID
    if uuid is not None and isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def make_json(accelerated: bool = True) -> tuple[JsonEncode, JsonDecode]:
    """The JSON codec: compact output, NaN and infinities allowed, as ``json`` does them.

    ``JSONEncoder.encode`` builds a new C encoder for every call and ``JSONDecoder.decode``
    runs two regular expressions around the C scanner; for a small message these cost
    more than the encoding itself, so the C encoder and scanner are built once here
    (with ``accelerated``, when the interpreter has them). The encoder keeps no
    circular-reference markers (a shared markers dict would be unsafe across threads):
    a circular structure ends in ``RecursionError``, which :func:`encode` reports.
    """
    stock, stock_decode, c_encode, c_scan = _json_parts(accelerated)
    if c_encode is None or c_scan is None:
        return (lambda message: stock.encode(message).encode()), stock_decode
    fast_encode, fast_scan = c_encode, c_scan

    def encode_json(message: Any) -> bytes:
        return "".join(fast_encode(message, 0)).encode()

    def decode_json(text: str) -> Any:
        # What pycluster sends has no whitespace around the value: one scan does.
        # Anything else (or an error) takes the full decoder, which accepts what JSON
        # allows and words the error.
        try:
            value, end = fast_scan(text, 0)
        except (StopIteration, ValueError):
            return stock_decode(text)
        return value if end == len(text) else stock_decode(text)

    return encode_json, decode_json


MessageEncode = Callable[[Any], bytes]
MessageDecode = Callable[[bytes | bytearray], Any]


def message_codec(
    codec: Codec, allow: AllowList | None, *, use_orjson: bool = True
) -> tuple[MessageEncode, MessageDecode]:
    """``encode`` and ``decode`` for one channel, each a single call per message.

    The same results and errors as :func:`encode` and :func:`decode`; for JSON the
    common case runs the C encoder or scanner straight from here, without the
    dispatch on the codec and the wrappers (two Python calls fewer per message on
    each end), and anything unusual takes the general functions. With orjson
    installed (the ``fast`` extra) and ``use_orjson``, JSON goes through it where
    it gives the same result (see :func:`_orjson_codec`).
    """
    if codec is not _CODEC_JSON:
        return _advanced_codec(allow)
    _stock, _stock_decode, c_encode, c_scan = _json_parts(True)
    if c_encode is None or c_scan is None:
        return (lambda message: encode(message, codec)), (
            lambda payload: decode(payload, codec, allow)
        )
    fast_encode, fast_scan = c_encode, c_scan

    def encode_message(message: Any) -> bytes:
        try:
            return "".join(fast_encode(message, 0)).encode()
        except Exception:
            return encode(message, _CODEC_JSON)  # raises the worded TypeError

    def decode_message(payload: bytes | bytearray) -> Any:
        try:
            text = payload.decode()
            value, end = fast_scan(text, 0)
        except Exception:
            return decode(payload, _CODEC_JSON, allow)  # decodes, or raises DecodeError
        if end != len(text):
            return decode(payload, _CODEC_JSON, allow)
        return value

    if use_orjson:
        try:
            import orjson
        except (ImportError, OSError):  # not installed; or no descriptor left to read it
            pass
        else:
            return _orjson_codec(orjson, encode_message, decode_message)
    return encode_message, decode_message


_NEWLINE = ord("\n")


def _orjson_codec(
    orjson: Any, encode_json: MessageEncode, decode_json: MessageDecode
) -> tuple[MessageEncode, MessageDecode]:
    """JSON through orjson where its result is the ``json`` module's, else ``json``.

    On both ends of a small-message round trip, ``json``'s encoder and scanner were
    a fifth of the time on one CPU; orjson takes a fraction of that. Where the two
    differ, ``json`` decides:

    * orjson refuses what ``json`` writes its own way (keys that are not strings,
      integers beyond 64 bits, lone surrogates, subclasses of the built-in types,
      datetimes, dataclasses, nesting deeper than 254) and ``json`` then encodes it;
    * orjson writes NaN and the infinities as ``null``, so a payload with a ``null``
      in it is written again by ``json`` (which keeps them, and so None too);
    * orjson reads an integer beyond 64 bits as a float. It never writes one, so it
      decodes only what it wrote: its payloads end in a newline (white space JSON
      allows, and which ``json``'s compact output never has). Everything else, and
      whatever orjson fails on, goes to ``json``.
    """
    dumps, loads = orjson.dumps, orjson.loads
    option = (
        orjson.OPT_APPEND_NEWLINE
        | orjson.OPT_PASSTHROUGH_SUBCLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
    )

    def encode_message(message: Any) -> bytes:
        try:
            payload: bytes = dumps(message, option=option)
        except Exception:
            return encode_json(message)
        # (find, not "in": "in" first tries the operand as an integer, and fails slowly)
        if payload.find(b"null") != -1:
            return encode_json(message)
        return payload

    def decode_message(payload: bytes | bytearray) -> Any:
        if payload and payload[-1] == _NEWLINE:
            try:
                return loads(payload)
            except Exception:
                pass  # not orjson's after all (a hostile peer): json words the error
        return decode_json(payload)

    return encode_message, decode_message


class LazyCodec:
    """A channel end's ``encode_message`` and ``decode_message``, made with the first
    message rather than at start-up: a worker comes online, and the primary forks,
    without importing json (or orjson, 5 ms).
    """

    def __init__(self) -> None:
        self.encode_message: MessageEncode = self._first_encode
        self.decode_message: MessageDecode = self._first_decode

    def make_codec(self) -> tuple[MessageEncode, MessageDecode]:
        """The pair for this end (see :func:`message_codec`)."""
        raise NotImplementedError

    def _first_encode(self, message: Any) -> bytes:
        self.encode_message, self.decode_message = self.make_codec()
        return self.encode_message(message)

    def _first_decode(self, payload: bytes | bytearray) -> Any:
        self.encode_message, self.decode_message = self.make_codec()
        return self.decode_message(payload)


def _advanced_codec(allow: AllowList | None) -> tuple[MessageEncode, MessageDecode]:
    """``message_codec`` for "advanced": pickle called straight, errors worded as usual."""
    import copyreg
    import pickle

    dumps, loads = pickle.dumps, pickle.loads
    # What _restricted_load looks up per message, looked up once: about a fifth of
    # the primary's cost of decoding a small message.
    unpickler = None if allow is None else _restricted_unpickler(allow)
    extension_cache = copyreg._extension_cache  # type: ignore[attr-defined]
    stream = io.BytesIO

    def encode_message(message: Any) -> bytes:
        try:
            return dumps(message, protocol=5)
        except Exception:
            return encode(message, _CODEC_ADVANCED)  # raises the worded TypeError

    def decode_message(payload: bytes | bytearray) -> Any:
        try:
            if unpickler is None:
                return loads(payload)
            if extension_cache:  # see _restricted_load
                extension_cache.clear()
            return unpickler(stream(payload)).load()
        except DecodeError:
            raise
        except Exception as exc:  # worded as decode() words it
            raise DecodeError(f"cannot decode advanced payload: {exc!r}") from exc

    return encode_message, decode_message


# Built on first use: a worker comes online without importing json.
_json: tuple[JsonEncode, JsonDecode] | None = None


def _json_codec() -> tuple[JsonEncode, JsonDecode]:
    global _json
    if _json is None:
        _json = make_json()
    return _json


# An enum member looked up on its class costs about 0.1 us in Python 3.11; the message
# path compares against module constants instead.
_CODEC_JSON = Codec.JSON
_CODEC_ADVANCED = Codec.ADVANCED


class DecodeError(Exception):
    """A payload could not be decoded, or named a type that is not allowed."""


# (module, qualified name) pairs that pickle looks up for the default types.
_DEFAULT_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "complex"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "datetime"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        ("uuid", "SafeUUID"),
        ("collections", "OrderedDict"),
        ("collections", "deque"),
        ("pathlib", "PurePath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("pathlib", "Path"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
    }
)


class AllowList:
    """The set of classes that "advanced" decoding may construct."""

    def __init__(self) -> None:
        self._globals: dict[tuple[str, str], Any] = {}
        self._unpickler: type | None = None  # see _restricted_unpickler

    def add(self, *classes: type) -> None:
        """Allow instances of ``classes`` (for example the user's dataclasses)."""
        for cls in classes:
            if not isinstance(cls, type):
                raise TypeError(f"allow_types() takes classes, not {type(cls).__name__}")
            self._globals[(cls.__module__, cls.__qualname__)] = cls

    def find(self, module: str, name: str) -> Any:
        """Return the global pickle asks for, if it is allowed."""
        cls = self._globals.get((module, name))
        if cls is not None:
            return cls
        if (module, name) == ("fractions", "Fraction"):
            return _fraction
        if (module, name) in _DEFAULT_GLOBALS:
            return _import_global(module, name)
        raise DecodeError(
            f"refusing to decode {module}.{name}: not an allowed type "
            "(register it with cluster.allow_types())"
        )


def _import_global(module: str, name: str) -> Any:
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)


# What str(Fraction) gives: Python 3.10 pickles a Fraction as Fraction("n/d").
_FRACTION_TEXT = r"-?[0-9]+(/[0-9]+)?\Z"


def _fraction(*args: Any) -> Any:
    """Build a Fraction only from what pickling one produces: ints, or its "n/d" text.

    Fraction("1e1000000000") (or a Decimal with that exponent) computes 10**10**9:
    a 30-byte payload would stall the primary for hours.
    """
    import re
    from fractions import Fraction

    if not 1 <= len(args) <= 2 or not all(
        type(a) is int or (type(a) is str and re.match(_FRACTION_TEXT, a)) for a in args
    ):
        raise DecodeError("refusing to decode a Fraction from anything but integers")
    return Fraction(*args)


def _restricted_unpickler(allow: AllowList) -> type:
    """The unpickler class of one allow-list, defined once per list.

    Its ``find_class`` is bound to the list, so an instance needs no Python
    ``__init__`` of its own: constructing one per message is the C constructor only.
    """
    cls = allow._unpickler
    if cls is None:
        # pickle is imported on first use: a JSON-only worker starts faster without it.
        import pickle

        find = allow.find

        class RestrictedUnpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                return find(module, name)

        allow._unpickler = cls = RestrictedUnpickler
    return cls


def _restricted_load(data: bytes | bytearray, allow: AllowList) -> Any:
    import copyreg

    # The C unpickler takes an extension code (EXT1/2/4) that an earlier trusted
    # load resolved from copyreg's process-wide cache, without asking find_class:
    # empty the cache so every code faces the allow-list.
    if copyreg._extension_cache:  # type: ignore[attr-defined]
        copyreg._extension_cache.clear()  # type: ignore[attr-defined]
    return (allow._unpickler or _restricted_unpickler(allow))(io.BytesIO(data)).load()


def encode(message: Any, codec: Codec) -> bytes:
    """Encode a user message; raise ``TypeError`` naming the type that cannot be encoded."""
    if codec is _CODEC_JSON:
        try:
            return (_json or _json_codec())[0](message)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot send message with JSON serialization: {exc}") from exc
        except RecursionError as exc:
            raise TypeError(
                "cannot send a circular structure with JSON serialization "
                "(use serialization='advanced')"
            ) from exc
    import pickle

    try:
        return pickle.dumps(message, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"cannot send message with advanced serialization: {exc}") from exc


def decode(payload: bytes | bytearray, codec: Codec, allow: AllowList | None) -> Any:
    """Decode a payload; with ``allow`` given, only allowed types are constructed.

    Raises :class:`DecodeError` for any failure, never the codec's own exceptions.
    """
    try:
        if codec is _CODEC_JSON:
            # Decoding the text first skips json.loads' encoding detection for bytes;
            # what we send is always UTF-8.
            return (_json or _json_codec())[1](payload.decode())
        if allow is None:
            import pickle

            return pickle.loads(payload)
        return _restricted_load(payload, allow)
    except DecodeError:
        raise
    except Exception as exc:  # any codec failure on untrusted input is the peer's fault
        raise DecodeError(f"cannot decode {codec.name.lower()} payload: {exc!r}") from exc


def codec_named(name: str) -> Codec:
    """Map a ``serialization`` setting to its codec."""
    return Codec.ADVANCED if name == "advanced" else Codec.JSON
