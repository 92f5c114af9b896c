"""Framing (batches <-> frames <-> bytes), message tables and serialization."""

from __future__ import annotations

import pickle
import struct
import threading
import typing

import cloudpickle
import msgspec
import numpy as np
import pytest

from nbcluster.errors import ProtocolError, SerializationError
from nbcluster.protocol import framing, messages as m, serialize
from nbcluster.protocol.framing import EXT_FRAMED, EXT_INLINE, INLINE_LIMIT, decode, encode, frame_header
from nbcluster.protocol.serialize import (Serialized, TaskRef, all_plain, describe, dump_value, dumps,
                                          dumps_function, is_plain, load_value, loads,
                                          loads_function, sizeof)


def address(buf) -> int:
    return np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0]


def to_stream(frames) -> bytes:
    return frame_header(frames) + b"".join(bytes(memoryview(f)) for f in frames)


def from_stream(data: bytes) -> list:
    (count,) = struct.unpack_from("<I", data)
    lengths = struct.unpack_from(f"<{count}Q", data, 4)
    pos, frames = 4 + 8 * count, []
    for n in lengths:
        frames.append(data[pos:pos + n])
        pos += n
    assert pos == len(data)
    return frames


# ---------------------------------------------------------------------- framing
def test_plain_batch_round_trip():
    batch = [m.Submit([m.TaskSpec("k", "fn", [1, 2.5, "s", None, True], None, [],
                                  {"priority": 3})]),
             m.Release(["a", "b"]), m.Done("k", True, -(2**63), 2**64 - 1, ["w"]),
             m.Function("tok", b"\x00\xffbytes"), m.Heartbeat({"nested": {"x": [1, {}]}})]
    frames = encode(batch)
    assert len(frames) == 1
    assert decode(frames) == batch
    assert decode(from_stream(to_stream(frames))) == batch
    # on the wire a message is an array [op, *fields]: compact, and readable by any msgpack
    assert msgspec.msgpack.decode(frames[0])[1] == ["release", ["a", "b"]]


def test_tuples_and_sets_travel_as_lists():
    assert decode(encode([m.Free(("a", "b"), (1, 2)), m.Release({"x"})])) == [
        m.Free(["a", "b"], [1, 2]), m.Release(["x"])]


def test_unencodable_value_is_refused():
    with pytest.raises(TypeError, match="object"):
        encode([m.Done("k", True, object(), 1, [])])


def test_numpy_array_travels_out_of_band_without_copies():
    arr = np.arange(1_000_000, dtype="f8")
    ser = dumps(arr)
    assert len(ser.buffers) == 1 and len(ser.header) < 1000      # the data is not in the pickle
    assert address(ser.buffers[0]) == address(arr.view(np.uint8))
    frames = encode([m.Done("k", True, ser, arr.nbytes, [])])
    assert len(frames) == 2
    assert frames[1] is ser.buffers[0]                            # the array's own memory
    assert address(frames[1]) == address(arr.view(np.uint8))
    assert len(frames[0]) < 2000                                  # control frame stays small
    [done] = decode(frames)
    got = done.value
    assert (type(done), done.key, done.has_value, done.nbytes) == (m.Done, "k", True, arr.nbytes)
    assert type(got) is Serialized and got.buffers[0] is frames[1]
    out = loads(got)
    assert np.array_equal(out, arr)
    assert np.shares_memory(out, np.frombuffer(frames[1], dtype=np.uint8))   # no copy on load
    # the same over a byte stream, as TCP carries it
    header = frame_header(frames)
    assert header == struct.pack("<IQQ", 2, len(frames[0]), arr.nbytes)
    [done] = decode(from_stream(to_stream(frames)))
    got = done.value
    assert np.array_equal(loads(got), arr)


def test_several_serialized_values_in_one_batch():
    a, b = np.ones(10, "i4"), np.zeros((3, 4))
    batch = [m.Done("a", True, dumps(a), 40, []), m.Done("b", True, dumps(b), 96, []),
             m.Data(1, {"x": dumps({"arr": a, "n": 1}), "y": 5}, [], {})]
    got = decode(from_stream(to_stream(encode(batch))))
    assert np.array_equal(loads(got[0].value), a)
    assert np.array_equal(loads(got[1].value), b)
    d = loads(got[2].values["x"])
    assert np.array_equal(d["arr"], a) and d["n"] == 1 and got[2].values["y"] == 5


def test_large_pickle_header_gets_a_frame_of_its_own():
    value = {"blob": b"x" * (INLINE_LIMIT + 10)}   # bytes are pickled in band
    ser = dumps(value)
    assert not ser.buffers and len(ser.header) > INLINE_LIMIT
    frames = encode([m.Done("k", True, ser, 1, [])])
    assert len(frames) == 2 and frames[1] is ser.header
    assert msgspec.msgpack.decode(frames[0], ext_hook=lambda code, data: code)[0][3] == EXT_FRAMED
    [done] = decode(from_stream(to_stream(frames)))
    assert loads(done.value) == value


def test_small_pickle_header_rides_inline():
    ser = dumps([1, 2, 3, "x" * 10])
    frames = encode([m.Done("k", True, ser, 1, [])])
    assert len(frames) == 1
    assert msgspec.msgpack.decode(frames[0], ext_hook=lambda code, data: code)[0][3] == EXT_INLINE
    assert loads(decode(frames)[0].value) == [1, 2, 3, "x" * 10]


def test_decoded_serialized_can_be_forwarded():
    """The scheduler relays arguments it never unpickles: decode -> encode -> decode."""
    arr = np.arange(100)
    once = decode(encode([m.Compute("k", "fn", dumps((arr,)), None, {}, True, 0, None, 1)]))
    twice = decode(from_stream(to_stream(encode(once))))
    (got,) = loads(twice[0].args)
    assert np.array_equal(got, arr)


def test_frame_header_counts_any_buffer():
    frames = [b"abc", memoryview(b"12345"), bytearray(2), np.zeros(3, "f8").data]
    assert frame_header(frames) == struct.pack("<I4Q", 4, 3, 5, 2, 24)
    assert frame_header([b""]) == struct.pack("<IQ", 1, 0)


def _ext(code, data):
    return msgspec.msgpack.encode([["done", "k", True, msgspec.msgpack.Ext(code, data), 1, []]])


@pytest.mark.parametrize("frames", [
    [],
    [b""],
    [b"\xc1"],                                              # never used in msgpack
    [b"\x92\x01"],                                          # truncated array
    [msgspec.msgpack.encode([1]) + b"\x00"],                         # trailing bytes
    [msgspec.msgpack.encode({"a": 1})],                              # a batch is a list
    [msgspec.msgpack.encode("text")],
    [None],
    [12345],
    [_ext(EXT_INLINE, b"\x01\x00")],                        # range too short
    [_ext(EXT_INLINE, struct.pack("<II", 1, 1))],           # points past the frames
    [_ext(EXT_INLINE, struct.pack("<II", 0, 1)), b"x"],     # points at the control frame
    [_ext(EXT_FRAMED, struct.pack("<II", 1, 0))],           # header frame missing
    [_ext(EXT_FRAMED, struct.pack("<II", 1, 1)), b"buf"],   # header frame missing
    [_ext(9, struct.pack("<II", 1, 0)), b"x"],              # unknown extension
], ids=lambda f: repr(f)[:40])
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        decode(frames)


def test_framing_constants():
    assert framing.EXT_INLINE != framing.EXT_FRAMED


# ---------------------------------------------------------------------- message records
def test_every_message_type_is_declared_once_as_a_record():
    tags = [kind.__struct_config__.tag for kind in m.MESSAGES]
    assert len(tags) == len(set(tags)) == len(m.MESSAGES)
    declared = {v for v in vars(m).values() if isinstance(v, type) and issubclass(v, m.Message)
                and v is not m.Message}
    assert declared == set(m.MESSAGES)
    for role, kinds in m.TO_SCHEDULER.items():
        assert kinds <= set(m.MESSAGES), role
    assert not (m.TO_SCHEDULER["client"] & m.TO_SCHEDULER["worker"])
    assert typing.get_args(m.AnyMessage) == m.MESSAGES    # what the decoder accepts


def _wire(*raw) -> list:
    return [msgspec.msgpack.encode(list(raw))]


def test_decoding_checks_every_field_type():
    ser = dumps(ValueError("x"))
    good = [m.Finished("k", 8, 0.0, 1, True, None, "int", 3),
            m.Failed("k", ser, None, 0, 1.5, None, 3),
            m.Compute("k", "fn", ser, None, {"d": ["w"]}, False, -3, None, 1),
            m.Compute("k", "fn", [1], {"a": 1}, {}, True, 0.5, {"timeout": 1.0}, 2),
            m.UpdateData({"k": 10}, "tcp://w:1"), m.Missing("k", "d", ""),
            m.Done("k", True, 1, 8, []), m.Done("k", False, None, 10**7, ["tcp://w:1"]),
            m.SetLimit("k", [5, 1.5], None), m.Status("paused", "memory"),
            m.Transfers([("k", "tcp://w:1", 1.0, 2.0, 8)])]
    frames = encode(good)
    assert [type(g) for g in decode(frames)] == [type(g) for g in good]
    again = encode(decode(frames))   # nothing lost on the way (ints in float fields: floats)
    assert encode(decode(again)) == again
    bad = [["finished", "k", 8.0, 0.0, 1, True, None, "int", 1],   # nbytes a float
           ["finished", "k", True, 0.0, 1, True, None, "int", 1],  # nbytes a bool
           ["finished", "k", 8, 0.0, 1, 1, None, "int", 1],        # flag an int
           ["finished", "k", 8, 0.0, 1, True, None, "int", None],  # no run id
           ["finished", "k", 8, 0.0, 1, True, None, "int"],        # a field short
           ["finished", "k", 8, 0.0, 1, True, None, "int", 1, 2],  # a field too many
           ["update-data", {"k": "10"}, "w"], ["update-data", {1: 10}, "w"],
           ["release", ["a", None]], ["free", "a"], ["free", ["a"]], ["heartbeat", None],
           ["done", "k", False, None, 8, "tcp://w:1"],                 # holders not a list
           ["limit", "k", [0, 1], None], ["limit", "k", [1], None],   # rate: 2 positives
           ["limit", "k", None, 0],                                    # concurrency > 0
           ["status", "asleep", ""], ["memory-limit", 0],
           ["submit", [["", "fn", [], None, [], None]]],               # empty key
           ["transfers", [["k", "w", 1.0, 2.0]]]]
    for msg in bad:
        with pytest.raises(ProtocolError, match=repr(msg[0])):
            decode(_wire(msg))


def test_decode_error_names_the_message_and_field():
    with pytest.raises(ProtocolError, match=r"'finished': bad nbytes: Expected `int`, got `str`"):
        decode(_wire(["release", ["a"]], ["finished", "k", "8", 0.0, 1, True, None, "int", 1]))
    with pytest.raises(ProtocolError, match="unknown message type 'frobnicate'"):
        decode(_wire(["frobnicate", 1]))
    with pytest.raises(ProtocolError, match=r"'release' takes \['keys'\]"):
        decode(_wire(["release"]))


def test_check_task():
    m.check_task(m.TaskSpec("k", "fn", [1], None, [], None))
    m.check_task(m.TaskSpec("k", "fn", dumps(()), dumps({}), ["d"],
                            {"priority": -2, "workers": ["w"], "queue": "high", "retries": 2,
                             "rate": [10, 1.0], "timeout": 0.5, "retry_jitter": False}))
    for bad in (["k", "fn", "args", None, [], None], ["k", "fn", [], [], [], None],
                ["k", "fn", [], None, ["k"], None],
                ["k", "fn", [], None, [], {"workers": "w"}],
                ["k", "fn", [], None, [], {"workers": []}],
                ["k", "fn", [], None, [], {"priority": "1"}],
                ["k", "fn", [], None, [], {"priority": True}],
                ["k", "fn", [], None, [], {"anything": "else"}],
                ["k", "fn", [], None, [], {"retries": -1}],
                ["k", "fn", [], None, [], {"queue": "x" * 65}],
                ["k", "fn", [], None, [], {"rate": [0, 1]}]):
        with pytest.raises(ProtocolError):
            m.check_task(m.TaskSpec(*bad))


def test_plain_values():
    for v in (0, -(2**63), 2**64 - 1, 1.5, float("inf"), "", "é" * 100, True, False, None):
        assert is_plain(v), v
        assert dump_value(v) is v
        assert decode(encode([m.Done("k", True, v, 1, [])]))[0].value == v
    for v in (2**64, -(2**63) - 1, "x" * 65536, b"x", [1], (1,), {"a": 1}, np.int64(1),
              1j, "\udc80"):   # a lone surrogate is not valid UTF-8: msgpack cannot carry it
        assert not is_plain(v), repr(v)
        ser = dump_value(v)
        assert type(ser) is Serialized
        assert load_value(decode(encode([m.Done("k", True, ser, 1, [])]))[0].value) == v
    assert all_plain([1, "a", None]) and not all_plain([1, [2]]) and all_plain([])


def test_plain_values_never_touch_pickle(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickled")
    monkeypatch.setattr(serialize.pickle, "dumps", boom)
    monkeypatch.setattr(serialize.cloudpickle, "dumps", boom)
    for v in (1, "text", 2.5, None, True):
        assert dump_value(v) is v and load_value(v) is v


def test_dumps_falls_back_to_cloudpickle():
    ser = dumps(lambda x: x + 1)
    assert loads(ser)(1) == 2
    assert ser.nbytes == len(ser.header)
    assert "bytes" in repr(ser)


class Ref(TaskRef):
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __reduce__(self):
        raise TypeError("a Ref is not pickled by value")


def test_task_refs_become_persistent_ids():
    a, b = Ref("a-1"), Ref("b-2")
    refs: list = []
    ser = dumps(((a, [b, {"k": a}]), {"kw": b}), refs)
    assert refs == ["a-1", "b-2", "a-1", "b-2"]
    assert b"a-1" in ser.header                        # the key, not the object
    got = loads(ser, resolve=lambda key: f"<value of {key}>")
    assert got == (("<value of a-1>", ["<value of b-2>", {"k": "<value of a-1>"}]),
                   {"kw": "<value of b-2>"})
    with pytest.raises(SerializationError):
        loads(ser)                                     # refs need a resolver
    refs = []
    dumps([1, 2], refs)
    assert refs == []


def test_task_refs_with_out_of_band_buffers():
    arr = np.arange(1000)
    refs: list = []
    ser = dumps((Ref("x"), arr), refs)
    assert refs == ["x"] and len(ser.buffers) == 1
    got = loads(decode(encode([m.Done("k", True, ser, 1, [])]))[0].value, resolve=lambda k: k)
    assert got[0] == "x" and np.array_equal(got[1], arr)


def test_unpicklable_object_named_in_the_error():
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        dumps(lock, what="an argument of f()")
    text = str(info.value)
    assert "an argument of f()" in text and "_thread.lock" in text
    assert isinstance(info.value, TypeError)
    with pytest.raises(SerializationError, match=r"_thread\.lock"):
        dumps({"a": [1, 2, (3, lock)]})                # found inside containers
    with pytest.raises(SerializationError, match=r"_thread\.lock"):
        dumps({"a": [1, lock]}, refs=[])


def test_unpicklable_object_next_to_a_task_ref_is_the_one_named():
    with pytest.raises(SerializationError) as info:
        dumps((Ref("x"), [threading.Lock()]), refs=[], what="an argument of g()")
    assert "_thread.lock" in str(info.value) and "Ref" not in str(info.value)


def test_unpicklable_function_named():
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="function"):
        dumps_function(lambda: lock)
    assert loads_function(dumps_function(lambda x: x * 2))(4) == 8


def test_describe_is_short_and_survives_bad_repr():
    class BadRepr:
        def __repr__(self):
            raise RuntimeError("no")
    assert "BadRepr" in describe(BadRepr())
    assert len(describe("x" * 1000).split(" of type ")[0]) <= 80


def test_loads_of_garbage_raises_serialization_error():
    with pytest.raises(SerializationError):
        loads(Serialized(b"not a pickle", []))


def test_sizeof():
    assert sizeof(np.zeros(1000, "f8")) == 8000
    assert sizeof([]) == 56 and sizeof({}) == 64
    assert sizeof(list(range(1000))) > 8000
    assert sizeof({i: "x" for i in range(100)}) > 100 * 24
    assert sizeof({1, 2, 3}) > 56
    assert sizeof(b"x" * 10_000) >= 10_000


def test_pickle_protocol_is_5():
    assert serialize.PROTOCOL == 5 == pickle.HIGHEST_PROTOCOL or serialize.PROTOCOL == 5
    assert cloudpickle is serialize.cloudpickle
