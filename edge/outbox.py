"""The durable outbox: every event is committed to SQLite before it is published, and deleted only
when the broker has acknowledged it (MQTT QoS 1 PUBACK).

WAL journal + ``synchronous=FULL``: once ``add`` has returned, the row survives SIGKILL and a
power cut (the WAL is fsynced at every commit). The event id is the primary key, so adding the
same event twice (a frame reprocessed after a restart) keeps one row, and the first payload is
kept: the one that may already have been sent. One connection shared by the daemon thread (add)
and the publisher thread (pending/ack), serialised by a lock; each call is one short statement.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order: oldest first
    event_id TEXT    NOT NULL UNIQUE,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    added    REAL    NOT NULL                    -- unix time, for the status' oldest age
)
"""


@dataclass(frozen=True)
class OutboxItem:
    event_id: str
    topic: str
    payload: bytes
    attempts: int


class OutboxError(RuntimeError):
    """The outbox database cannot be opened or used."""


class Outbox:
    def __init__(self, path: str | Path, max_events: int) -> None:
        if max_events < 1:
            raise ValueError(f"outbox max_events must be >= 1, got {max_events}")
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._full_logged = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; every statement below is its own transaction.
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise OutboxError(f"{self.path}: cannot use WAL journal (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from exc

    def add(self, event_id: str, topic: str, payload: bytes) -> bool:
        """Commit an event durably. True if it is in the outbox (now or already); False if full."""
        with self._lock:
            db = self._db
            if db.execute("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)).fetchone():
                return True
            depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if depth >= self.max_events:
                log.warning(
                    "outbox FULL (%d of %d events, %s): event %s NOT queued; "
                    "the broker has been unreachable for long or raise outbox.max_events",
                    depth, self.max_events, self.path, event_id,
                )
                self._full_logged = True
                return False
            db.execute(
                "INSERT INTO outbox (event_id, topic, payload, added) VALUES (?, ?, ?, ?)",
                (event_id, topic, bytes(payload), time.time()),
            )
            if self._full_logged:
                log.info("outbox accepting events again (%d queued)", depth + 1)
                self._full_logged = False
            return True

    def pending(
        self, limit: int, exclude: set[str] | frozenset[str] = frozenset()
    ) -> list[OutboxItem]:
        """Up to `limit` events oldest first, skipping ids in `exclude` (already in flight)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, topic, payload, attempts FROM outbox ORDER BY seq LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        items = [OutboxItem(r[0], r[1], bytes(r[2]), r[3]) for r in rows if r[0] not in exclude]
        return items[:limit]

    def mark_attempt(self, event_id: str) -> None:
        """Count one more send (kept for the logs: a high count means the broker rejects it)."""
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE event_id = ?", (event_id,)
            )

    def ack(self, event_id: str) -> None:
        """The broker has it: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the oldest queued event was added (None when empty)."""
        with self._lock:
            oldest = self._db.execute("SELECT MIN(added) FROM outbox").fetchone()[0]
        return None if oldest is None else max(0.0, (now or time.time()) - oldest)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
