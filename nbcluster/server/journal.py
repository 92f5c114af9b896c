"""The scheduler's journal: an SQLite file (WAL) holding what a restart must know (issue 15).

The state machine says what changed (``nbcluster/state/journal.py``); this writes it, one
transaction per step, before the scheduler sends what the step decided. A task handed to the
scheduler is therefore on disk before anything acknowledges it (its DONE, a reply, a COMPUTE).
Specs, errors and limits are stored as the typed records they travel as, encoded by the
protocol's own framing, and checked again when read: a journal that does not decode is
refused as a whole, never half-loaded.

``synchronous=NORMAL`` in WAL mode: a commit survives the process being killed (it is in the
operating system's hands), not a power cut of the machine in the last moments before it;
``durable=True`` (``synchronous=FULL``) covers that too, at the price of an fsync a step.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from typing import Any

import msgspec

from ..errors import JournalError
from ..protocol import messages as m
from ..protocol.framing import decode, encode
from ..state.journal import Saved, SavedTask

FORMAT = 1                      # of the tables below; another is refused, not guessed at
_APPLICATION_ID = 0x6E62636C    # "nbcl": SQLite's header field, so that other files are refused
_LENGTH = struct.Struct("<I")
_ONE = _LENGTH.pack(1)
_COLUMN = {"wants": 1, "retries": 2, "erred": 3}   # in an insert's [spec, wants, retries, erred]
_json_encode = msgspec.json.encode
logger = logging.getLogger("nbcluster.scheduler")

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE functions (token TEXT PRIMARY KEY, blob BLOB NOT NULL, owner TEXT NOT NULL);
CREATE TABLE tasks (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec BLOB NOT NULL,
                    wants BLOB NOT NULL, retries BLOB, erred BLOB) WITHOUT ROWID;
CREATE TABLE limits (key TEXT PRIMARY KEY, spec BLOB NOT NULL);
CREATE TABLE periodics (name TEXT PRIMARY KEY, spec BLOB NOT NULL, next_at REAL NOT NULL);
"""


def pack(msg: m.Message) -> bytes:
    """One record as bytes: its frames (the encoded record, then its pickle buffers)."""
    frames = encode([msg])
    if len(frames) == 1:   # no out-of-band buffers: the usual case, made cheap
        first = frames[0]
        return _ONE + _LENGTH.pack(len(first)) + first
    parts: list[bytes | memoryview] = [_LENGTH.pack(len(frames))]
    for frame in frames:
        data = memoryview(frame).cast("B")
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def unpack(blob: bytes, kind: type[m.Message]) -> Any:
    view = memoryview(blob)
    (count,), pos, frames = _LENGTH.unpack_from(view), _LENGTH.size, []
    for _ in range(count):
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += _LENGTH.size
        frames.append(bytes(view[pos:pos + size]))
        pos += size
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the last frame")
    (msg,) = decode(frames)
    if type(msg) is not kind:
        raise ValueError(f"a {type(msg).__name__} where a {kind.__name__} belongs")
    return msg


def journal_token(path: str | None) -> str | None:
    """The token a scheduler kept in its journal (reconnecting peers still hold it)."""
    if not path or not os.path.exists(path):
        return None
    journal = Journal(path)
    try:
        return journal.meta("token")
    finally:
        journal.close()


class Journal:
    def __init__(self, path: str, durable: bool = False) -> None:
        self.path = os.path.abspath(path)
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if not existed:   # private from the start: it holds the token and the tasks' arguments
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            if existed:
                self._check()
            else:
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                self.db.execute(f"PRAGMA user_version={FORMAT}")
            self.seq = 1 + self.db.execute("SELECT coalesce(max(seq), 0) FROM tasks").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise JournalError(f"cannot use {self.path} as a journal: {e}") from None

    def _check(self) -> None:
        app = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if app != _APPLICATION_ID:
            raise JournalError(f"{self.path} is not an nbcluster journal (an SQLite file of "
                               "something else); give --journal a new file or this one's own")
        if version != FORMAT:
            raise JournalError(f"{self.path} is a journal of format {version}; this nbcluster "
                               f"reads format {FORMAT}: start with a new file (the old one "
                               "is left as it is)")
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise JournalError(f"{self.path} is damaged: {'; '.join(problems[:3])}")

    # ------------------------------------------------------------------ reading
    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def load(self) -> Saved:
        """Everything, decoded and checked; JournalError names the first row that is not."""
        saved = Saved(runs=int(self.meta("runs") or 0))
        where = "functions"
        try:
            for token, blob, owner in self.db.execute(
                    "SELECT token, blob, owner FROM functions ORDER BY rowid"):
                where = f"function {token!r}"
                saved.functions.append((str(token), bytes(blob), str(owner)))
            for key, blob in self.db.execute("SELECT key, spec FROM limits ORDER BY rowid"):
                where = f"limit {key!r}"
                saved.limits.append(unpack(blob, m.SetLimit))
            for name, blob, next_at in self.db.execute(
                    "SELECT name, spec, next_at FROM periodics ORDER BY rowid"):
                where = f"schedule {name!r}"
                saved.periodics.append((unpack(blob, m.Schedule), float(next_at)))
            for key, spec, wants, retries, erred in self.db.execute(
                    "SELECT key, spec, wants, retries, erred FROM tasks ORDER BY seq"):
                where = f"task {key!r}"
                submit = unpack(spec, m.Submit)
                (task_spec,) = submit.tasks
                if task_spec.key != key:
                    raise ValueError(f"its spec names {task_spec.key!r}")
                who = msgspec.json.decode(wants)
                if type(who) is not list or not all(type(c) is str for c in who):
                    raise ValueError(f"wanted by {who!r}")
                spent = msgspec.json.decode(retries) if retries is not None else None
                if spent is not None and (type(spent) is not list or len(spent) != 2
                                          or not all(type(n) is int for n in spent)):
                    raise ValueError(f"retries {spent!r}")
                saved.tasks.append(SavedTask(
                    task_spec, tuple(who), None if spent is None else (spent[0], spent[1]),
                    None if erred is None else unpack(erred, m.Erred)))
        except (sqlite3.DatabaseError, ValueError, TypeError, struct.error, m.ProtocolError,
                msgspec.DecodeError) as e:
            raise JournalError(f"{self.path} cannot be read back ({where}: {e}); nothing of "
                               "it was used") from None
        return saved

    # ------------------------------------------------------------------ writing
    def write(self, records: list[tuple[Any, ...]], runs: int) -> None:
        """One transaction for one step's records (see ``nbcluster/state/journal.py``)."""
        inserts: dict[str, list[Any]] = {}     # key -> [spec, wants, retries, erred], new
        gone: set[str] = set()                 # keys to delete (known before this step)
        changes: dict[str, dict[str, Any]] = {}   # key -> column -> value, for known rows
        functions, limits, gone_functions = [], {}, []
        periodics: dict[str, tuple[bytes, float] | None] = {}   # None: cancelled
        for record in records:
            kind = record[0]
            if kind == "task":
                spec, wants = record[1], record[2]
                inserts[spec.key] = [spec, wants, None, None]
                continue
            if kind == "fn":
                functions.append(record[1:])
                continue
            if kind == "unfn":
                gone_functions.append((record[1],))
                continue
            if kind == "limit":
                limits[record[1]] = m.SetLimit(record[1], record[2], record[3])
                continue
            if kind == "periodic":
                periodics[record[1].name] = (pack(record[1]), record[2])
                continue
            if kind == "unperiodic":
                periodics[record[1]] = None
                continue
            key = record[1]
            if kind == "forget":
                if inserts.pop(key, None) is None:
                    gone.add(key)
                changes.pop(key, None)
                continue
            if kind == "wants":
                column, value = "wants", record[2]
            elif kind == "retries":
                column, value = "retries", [record[2], record[3]]
            elif kind == "erred":
                column, value = "erred", (record[2], record[3], record[4])
            else:   # rerun: failed no more, and the retry budget is the task's own again
                column, value = "erred", None
            row = inserts.get(key)
            if row is not None:
                row[_COLUMN[column]] = value
                if kind == "rerun":
                    row[_COLUMN["retries"]] = None
            else:
                change = changes.setdefault(key, {})
                change[column] = value
                if kind == "rerun":
                    change["retries"] = None
        db = self.db
        db.execute("BEGIN")
        try:
            if gone:
                db.executemany("DELETE FROM tasks WHERE key = ?", [(k,) for k in gone])
            if functions:
                db.executemany("INSERT OR IGNORE INTO functions VALUES (?, ?, ?)", functions)
            if gone_functions:
                db.executemany("DELETE FROM functions WHERE token = ?", gone_functions)
            if limits:
                db.executemany("INSERT OR REPLACE INTO limits VALUES (?, ?)",
                               [(k, pack(v)) for k, v in limits.items()])
            if inserts:
                seq = self.seq
                self.seq += len(inserts)
                db.executemany("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                               [(key, seq + i, pack(m.Submit([spec])), _json_encode(wants),
                                 _retries(retries), _erred(key, erred))
                                for i, (key, (spec, wants, retries, erred))
                                in enumerate(inserts.items())])
            updates: dict[str, list[tuple[Any, str]]] = {"wants": [], "retries": [], "erred": []}
            for key, columns in changes.items():
                for column, value in columns.items():
                    encoded = _json_encode(value) if column == "wants" else \
                        _retries(value) if column == "retries" else _erred(key, value)
                    updates[column].append((encoded, key))
            for column, rows in updates.items():   # one statement per column, not per row
                if rows:
                    db.executemany(f"UPDATE tasks SET {column} = ? WHERE key = ?", rows)
            for name, schedule in periodics.items():
                if schedule is None:
                    db.execute("DELETE FROM periodics WHERE name = ?", (name,))
                else:
                    db.execute("INSERT OR REPLACE INTO periodics VALUES (?, ?, ?)",
                               (name, *schedule))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('runs', ?)", (str(runs),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


def _retries(value: list[int] | None) -> bytes | None:
    return None if value is None else _json_encode(value)


def _erred(key: str, value: tuple[Any, str | None, str | None] | None) -> bytes | None:
    return None if value is None else pack(m.Erred(key, *value))

