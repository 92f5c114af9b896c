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
from .journal_log import COMPACT_AFTER, Step, compacted, fold, pack_frames, unpack_frames

FORMAT = 2                      # of the tables below; another is refused, not guessed at
_APPLICATION_ID = 0x6E62636C    # "nbcl": SQLite's header field, so that other files are refused
logger = logging.getLogger("nbcluster.scheduler")

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE functions (token TEXT PRIMARY KEY, blob BLOB NOT NULL, owner TEXT NOT NULL);
CREATE TABLE log (seq INTEGER PRIMARY KEY, step BLOB NOT NULL, runs INTEGER NOT NULL);
CREATE TABLE limits (key TEXT PRIMARY KEY, spec BLOB NOT NULL);
CREATE TABLE periodics (name TEXT PRIMARY KEY, spec BLOB NOT NULL, next_at REAL NOT NULL);
"""


def pack(msg: m.Message) -> bytes:
    """One record as bytes: its frames (the encoded record, then its pickle buffers)."""
    return pack_frames(encode([msg]))


def unpack(blob: bytes, kind: type[m.Message]) -> Any:
    (msg,) = decode(unpack_frames(blob))
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
            self.logged = 0     # task records in the log (known once it was read)
            self.live = 0       # tasks it holds, about (exact after a read or compaction)
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
        logged_runs = self.db.execute("SELECT max(runs) FROM log").fetchone()[0] or 0
        saved = Saved(runs=max(int(self.meta("runs") or 0), int(logged_runs)))
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
            live = self._fold()
            saved.tasks = [SavedTask(spec, who, spent, error)
                           for spec, who, spent, error in live.values()]
        except (sqlite3.DatabaseError, ValueError, TypeError, struct.error, m.ProtocolError,
                msgspec.DecodeError) as e:
            raise JournalError(f"{self.path} cannot be read back ({where}: {e}); nothing of "
                               "it was used") from None
        return saved

    # ------------------------------------------------------------------ writing
    def _fold(self) -> dict[str, list[Any]]:
        """The live tasks, read from the log (ValueError names the row that does not read)."""
        live: dict[str, list[Any]] = {}
        logged = 0
        for seq, blob in self.db.execute("SELECT seq, step FROM log ORDER BY seq"):
            try:
                logged += fold(live, bytes(blob))
            except (ValueError, TypeError, struct.error, m.ProtocolError,
                    msgspec.DecodeError) as e:
                raise ValueError(f"step {seq}: {e}") from None
        self.logged, self.live = logged, len(live)
        return live

    def write(self, records: list[tuple[Any, ...]], runs: int) -> None:
        """One transaction for one step's records (see ``nbcluster/state/journal.py``)."""
        step = Step()
        functions, limits, gone_functions = [], {}, []
        periodics: dict[str, tuple[bytes, float] | None] = {}   # None: cancelled
        inserts, gone, changes = step.inserts, step.gone, step.changes
        for record in records:
            kind = record[0]
            if kind == "forget":   # the most common record, handled here (no call)
                key = record[1]
                if inserts.pop(key, None) is None:
                    gone.add(key)
                if changes:
                    changes.pop(key, None)
            elif kind == "task":
                inserts[record[1].key] = [record[1], record[2], None, None]
            elif kind == "fn":
                functions.append(record[1:])
            elif kind == "unfn":
                gone_functions.append((record[1],))
            elif kind == "limit":
                limits[record[1]] = m.SetLimit(record[1], record[2], record[3])
            elif kind == "periodic":
                periodics[record[1].name] = (pack(record[1]), record[2])
            elif kind == "unperiodic":
                periodics[record[1]] = None
            else:
                step.add(kind, record[1], record)
        db = self.db
        row = (step.encode(), runs) if len(step) else None
        if row is not None and not (functions or gone_functions or limits or periodics):
            # the usual step: one statement, its own transaction (a fifth of the cost)
            db.execute("INSERT INTO log (step, runs) VALUES (?, ?)", row)
            self._logged(step)
            return
        db.execute("BEGIN")
        try:
            if functions:
                db.executemany("INSERT OR IGNORE INTO functions VALUES (?, ?, ?)", functions)
            if gone_functions:
                db.executemany("DELETE FROM functions WHERE token = ?", gone_functions)
            if limits:
                db.executemany("INSERT OR REPLACE INTO limits VALUES (?, ?)",
                               [(k, pack(v)) for k, v in limits.items()])
            if row is not None:
                db.execute("INSERT INTO log (step, runs) VALUES (?, ?)", row)
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
        self._logged(step)

    def _logged(self, step: Step) -> None:
        self.logged += len(step)
        self.live = max(0, self.live + len(step.inserts) - len(step.gone))

    def wants_compaction(self) -> bool:
        """The log holds many times more records than live tasks: time to compact it."""
        return self.logged > max(COMPACT_AFTER, 4 * self.live)

    def compact(self) -> None:
        """Rewrite the log as the few rows of its live tasks (one transaction)."""
        live = self._fold()
        db = self.db
        db.execute("BEGIN")
        try:
            runs = db.execute("SELECT max(runs) FROM log").fetchone()[0] or 0
            db.execute("DELETE FROM log")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('runs', max(?, coalesce((SELECT "
                       "CAST(value AS INTEGER) FROM meta WHERE name = 'runs'), 0)))", (runs,))
            db.executemany("INSERT INTO log (step, runs) VALUES (?, ?)",
                           [(row, runs) for row in compacted(live)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.logged = self.live = len(live)

    def keys(self) -> list[str]:
        """The keys of the live tasks, in the order they were accepted."""
        return list(self._fold())

    def close(self) -> None:
        self.db.close()
