"""Which frames are done: a small SQLite table in the state dir, so a restart misses nothing
and scores nothing twice."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path


class ProcessedFrames:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS processed (frame_id TEXT PRIMARY KEY, path TEXT, "
            "score REAL, detected INTEGER, suppressed TEXT, processed_utc TEXT)"
        )

    def __contains__(self, frame_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM processed WHERE frame_id = ?", (frame_id,)
            ).fetchone()
        return row is not None

    def mark(
        self, frame_id: str, path: str, score: float, detected: bool, suppressed: str | None
    ) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO processed VALUES (?, ?, ?, ?, ?, ?)",
                (frame_id, path, score, int(detected), suppressed, now),
            )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
