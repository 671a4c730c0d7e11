"""The durable outbox: order, idempotence, bound, SIGKILL durability, two threads."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from edge.outbox import Outbox, OutboxError, OutboxItem

TOPIC = "guaita/pujalt/detection"


def payload(i: int) -> bytes:
    return f'{{"id":"pujalt-{i:06d}","n":{i}}}'.encode()


def test_add_pending_ack_in_order(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite", max_events=100) as box:
        for i in (3, 1, 2):  # insertion order, not id order, is delivery order
            assert box.add(f"e{i}", TOPIC, payload(i))
        assert box.depth() == 3
        items = box.pending(10)
        assert [i.event_id for i in items] == ["e3", "e1", "e2"]
        assert items[0] == OutboxItem("e3", TOPIC, payload(3), 0)
        assert [i.event_id for i in box.pending(2)] == ["e3", "e1"]
        assert [i.event_id for i in box.pending(2, exclude={"e3"})] == ["e1", "e2"]
        box.mark_attempt("e1")
        box.ack("e3")
        box.ack("never-added")  # harmless
        assert [(i.event_id, i.attempts) for i in box.pending(10)] == [("e1", 1), ("e2", 0)]
        assert box.depth() == 2 and box.oldest_age_s() is not None


def test_rows_survive_reopening(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"  # parent created on demand
    with Outbox(path, 10) as box:
        box.add("a", TOPIC, payload(1))
        box.add("b", TOPIC, payload(2))
        box.ack("a")
    with Outbox(path, 10) as box:
        assert [(i.event_id, i.payload) for i in box.pending(10)] == [("b", payload(2))]


def test_adding_the_same_event_twice_keeps_one_row_and_the_first_payload(tmp_path):
    with Outbox(tmp_path / "o.sqlite", 10) as box:
        assert box.add("pujalt-20240607003015", TOPIC, b"first")
        assert box.add("pujalt-20240607003015", TOPIC, b"second")  # reprocessed after a restart
        assert box.depth() == 1
        assert box.pending(10)[0].payload == b"first"


def test_full_outbox_refuses_with_a_clear_warning(tmp_path, caplog):
    with Outbox(tmp_path / "o.sqlite", max_events=3) as box:
        for i in range(3):
            assert box.add(f"e{i}", TOPIC, payload(i))
        with caplog.at_level(logging.WARNING, logger="edge.outbox"):
            assert box.add("e3", TOPIC, payload(3)) is False
        assert "outbox FULL" in caplog.text and "e3" in caplog.text and "3 of 3" in caplog.text
        assert box.depth() == 3
        assert box.add("e1", TOPIC, payload(1))  # already queued: still fine when full
        box.ack("e0")
        assert box.add("e3", TOPIC, payload(3))
        assert [i.event_id for i in box.pending(10)] == ["e1", "e2", "e3"]


def test_wal_and_full_sync(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path, 10) as box:
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        other = sqlite3.connect(path)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.close()


def test_unusable_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(tmp_path / "file" / "outbox.sqlite", 10)
    with pytest.raises(ValueError, match="max_events"):
        Outbox(tmp_path / "o.sqlite", 0)


CHILD = """
import sys
from edge.outbox import Outbox
box = Outbox(sys.argv[1], 100_000)
i = 0
while True:
    box.add(f"e{i:06d}", "guaita/pujalt/detection", b"x" * 2000 + str(i).encode())
    print(f"e{i:06d}", flush=True)  # only after add() returned
    i += 1
"""


def test_every_added_event_survives_sigkill(tmp_path):
    """add() returning means committed: kill -9 at an arbitrary point loses none of those."""
    path = tmp_path / "o.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True)
    acknowledged = []
    assert child.stdout is not None
    for line in child.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 40:
            os.kill(child.pid, signal.SIGKILL)  # mid-loop: likely inside the next add()
            break
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    with Outbox(path, 100_000) as box:
        stored = {i.event_id: i.payload for i in box.pending(100_000)}
    assert set(acknowledged) <= set(stored)
    for event_id in acknowledged:
        assert stored[event_id] == b"x" * 2000 + str(int(event_id[1:])).encode()


def test_two_threads_add_and_ack(tmp_path):
    """The daemon thread adds while the publisher thread acks, on one Outbox."""
    with Outbox(tmp_path / "o.sqlite", 10_000) as box:
        total, acked, errors = 300, [], []
        done = threading.Event()

        def producer():
            try:
                for i in range(total):
                    assert box.add(f"e{i}", TOPIC, payload(i))
            except Exception as exc:  # surfaced below
                errors.append(exc)
            finally:
                done.set()

        def consumer():
            try:
                while not (done.is_set() and box.depth() == 0):
                    for item in box.pending(20):
                        box.ack(item.event_id)
                        acked.append(item.event_id)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert box.depth() == 0
        assert sorted(acked) == sorted(f"e{i}" for i in range(total))
