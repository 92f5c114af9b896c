"""The tasks part of a scheduler's journal, as an append-only log of steps (issue 15).

A step (the records one scheduler step made, see ``nbcluster/state/journal.py``) is netted
out first (a task accepted and forgotten in the same step leaves nothing; only the last value
of a column counts) and written as ONE row: the specs of the tasks it accepted as one SUBMIT
record (the protocol's own framing, so arguments keep their out-of-band buffers), failures as
ERRED records, and the rest (keys forgotten, wanters, retries, failures cleared) as one typed
msgpack array. A row per task, keyed by task, cost about 10 us per task accepted and
forgotten; a row per step costs well under 1 us.

Reading folds the rows in order into the live tasks. The log only grows, so once it holds
many times more records than there are live tasks it is compacted: folded and written back
as a few rows, in one transaction, on the journal's writer thread.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from ..protocol import messages as m
from ..protocol.framing import decode, encode

_LENGTH = struct.Struct("<I")
CHUNK = 5000               # tasks per row when compacting
COMPACT_AFTER = 500_000    # records logged, at least, before the log is compacted


class Changes(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What a step did to tasks besides accepting them (applied after its SUBMIT)."""
    gone: list[str]                                   # forgotten (applied before the SUBMIT)
    wants: list[tuple[str, list[str]]]                # key, who wants it now
    retries: list[tuple[str, tuple[int, int] | None]]   # key, (left, count); None: reset
    erred: list[tuple[str, int | None]]               # key, index of its ERRED; None: cleared


_changes_decoder = msgspec.msgpack.Decoder(Changes)
_encode = msgspec.msgpack.Encoder().encode


class Step:
    """One step's records, netted out: new rows, keys gone, and changes of known rows."""

    def __init__(self) -> None:
        self.inserts: dict[str, list[Any]] = {}   # key -> [spec, wants, retries, erred]
        self.gone: set[str] = set()
        self.changes: dict[str, dict[str, Any]] = {}   # key -> column -> value

    def add(self, kind: str, key: str, record: tuple[Any, ...]) -> None:
        if kind == "forget":
            if self.inserts.pop(key, None) is None:
                self.gone.add(key)
            self.changes.pop(key, None)
            return
        if kind == "wants":
            column, value = "wants", record[2]
        elif kind == "retries":
            column, value = "retries", (record[2], record[3])
        elif kind == "erred":
            column, value = "erred", (record[2], record[3], record[4])
        else:   # rerun: failed no more, and the retry budget is the task's own again
            column, value = "erred", None
        row = self.inserts.get(key)
        if row is not None:
            row[_COLUMN[column]] = value
            if kind == "rerun":
                row[_COLUMN["retries"]] = None
        else:
            change = self.changes.setdefault(key, {})
            change[column] = value
            if kind == "rerun":
                change["retries"] = None

    def __len__(self) -> int:
        return len(self.inserts) + len(self.gone) + len(self.changes)

    def encode(self) -> bytes:
        """The step as one row's bytes."""
        erred: list[m.Erred] = []
        wants: list[tuple[str, list[str]]] = []
        retries: list[tuple[str, tuple[int, int] | None]] = []
        failed: list[tuple[str, int | None]] = []
        for key, (_, who, spent, error) in self.inserts.items():
            wants.append((key, who))     # (a tuple: encoded as the list it is read back as)
            if spent is not None:
                retries.append((key, spent))
            if error is not None:
                failed.append((key, len(erred)))
                erred.append(m.Erred(key, *error))
        for key, columns in self.changes.items():
            if "wants" in columns:
                wants.append((key, columns["wants"]))
            if "retries" in columns:
                retries.append((key, columns["retries"]))
            if "erred" in columns:
                error = columns["erred"]
                failed.append((key, None if error is None else len(erred)))
                if error is not None:
                    erred.append(m.Erred(key, *error))
        specs = [row[0] for row in self.inserts.values()]
        frames = encode([m.Submit(specs), *erred])
        frames.append(_encode(Changes(sorted(self.gone), wants, retries, failed)))
        return pack_frames(frames)


_COLUMN = {"wants": 1, "retries": 2, "erred": 3}   # in an insert's [spec, wants, retries, erred]


def pack_frames(frames: list[Any]) -> bytes:
    parts: list[Any] = [_LENGTH.pack(len(frames))]
    for frame in frames:
        data = memoryview(frame).cast("B")
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def unpack_frames(blob: bytes) -> list[bytes]:
    view = memoryview(blob)
    (count,), pos, frames = _LENGTH.unpack_from(view), _LENGTH.size, []
    for _ in range(count):
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += _LENGTH.size
        if pos + size > len(blob):
            raise ValueError("a frame runs past the end of the row")
        frames.append(bytes(view[pos:pos + size]))
        pos += size
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the last frame")
    return frames


def fold(live: dict[str, list[Any]], blob: bytes) -> int:
    """Apply one row to ``live`` (key -> [spec, wants, retries, erred], in the order they
    were accepted); returns the number of records it held. Raises ValueError (or a decoding
    error) for a row that is not one."""
    frames = unpack_frames(blob)
    if len(frames) < 2:
        raise ValueError("a step has at least two frames")
    changes = _changes_decoder.decode(frames[-1])
    batch = decode(frames[:-1])
    submit, erred = batch[0], batch[1:]
    if type(submit) is not m.Submit or not all(type(e) is m.Erred for e in erred):
        raise ValueError("a step is a SUBMIT followed by ERRED records")
    for key in changes.gone:
        live.pop(key, None)
    for spec in submit.tasks:
        m.check_task(spec)
        live.pop(spec.key, None)    # accepted again: it moves to the end
        live[spec.key] = [spec, (), None, None]
    for key, who in changes.wants:
        row = live.get(key)
        if row is not None:
            row[1] = tuple(who)
    for key, spent in changes.retries:
        row = live.get(key)
        if row is not None:
            row[2] = spent
    for key, index in changes.erred:
        row = live.get(key)
        if index is not None and not 0 <= index < len(erred):
            raise ValueError(f"task {key!r} names failure {index} of {len(erred)}")
        if row is not None:
            row[3] = None if index is None else erred[index]
    # as Step counts them (each accepted task has its wanters listed; more are changes)
    return len(submit.tasks) + len(changes.gone) + max(0, len(changes.wants) - len(submit.tasks))


def compacted(live: dict[str, list[Any]]) -> list[bytes]:
    """Rows that fold into ``live`` (in its order): a few steps of CHUNK tasks each."""
    rows = []
    items = list(live.items())
    for start in range(0, len(items), CHUNK):
        step = Step()
        for key, (spec, who, spent, error) in items[start:start + CHUNK]:
            step.inserts[key] = [spec, who, spent, None if error is None else
                                 (error.exception, error.traceback, error.blame)]
        rows.append(step.encode())
    return rows
