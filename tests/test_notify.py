"""sd_notify against a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edge.notify import Notifier


@contextmanager
def notify_socket(address: str | bytes) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, without blocking."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_status_stopping_reloading(tmp_path):
    path = str(tmp_path / "notify.sock")
    with notify_socket(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled and not n.watchdog_enabled
        assert n.ready("watching /home/pi/allsky/images")
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=watching /home/pi/allsky/images"
        assert n.status("12 frames scored,\n1 meteor")  # one line, whatever the caller passes
        assert sock.recv(4096).decode() == "STATUS=12 frames scored, 1 meteor"
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert n.reloading()
        lines = sock.recv(4096).decode().split("\n")
        assert lines[0] == "RELOADING=1"
        assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1][15:]) >= before
        assert n.extend_timeout(90)
        assert sock.recv(4096).decode() == "EXTEND_TIMEOUT_USEC=90000000"
        assert n.stopping()
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert not n.ping_watchdog()  # no WATCHDOG_USEC: nothing
        assert received(sock) == []
        n.close()


def test_abstract_namespace_socket():
    name = f"guaita-test-{os.getpid()}-{time.monotonic_ns()}"
    with notify_socket(b"\0" + name.encode()) as sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(4096) == b"READY=1"


def test_watchdog_pings_at_most_every_half_interval(tmp_path):
    path = str(tmp_path / "notify.sock")
    clock = FakeClock()
    with notify_socket(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000",
                      "WATCHDOG_PID": str(os.getpid())}, clock=clock)
        assert n.watchdog_enabled and n.watchdog_interval_s == 20.0
        sent = []
        # The daemon reports progress every 2 s (fake time) for 35 s.
        for _ in range(18):
            due = n.watchdog_due()
            assert n.ping_watchdog() is due
            sent.append(due)
            clock.now += 2.0
        datagrams = received(sock)
        assert datagrams == ["WATCHDOG=1"] * sum(sent)
        # First progress pings at once, then every 10 s (half of 20 s): t = 0, 10, 20, 30.
        assert [i * 2 for i, s in enumerate(sent) if s] == [0, 10, 20, 30]


def test_no_progress_means_no_ping(tmp_path):
    """A hung pipeline stops calling ping_watchdog; nothing reaches systemd, which restarts."""
    path = str(tmp_path / "notify.sock")
    clock = FakeClock()
    with notify_socket(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}, clock=clock)
        assert n.ping_watchdog()
        clock.now += 100  # stuck: no calls at all
        assert received(sock) == ["WATCHDOG=1"]
        assert n.watchdog_due()  # the next progress pings immediately


def test_watchdog_meant_for_another_process_is_ignored(tmp_path):
    path = str(tmp_path / "notify.sock")
    with notify_socket(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": str(os.getpid() + 1)})
        assert not n.watchdog_enabled and not n.ping_watchdog()
        assert received(sock) == []


def test_everything_is_a_noop_without_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier()  # reads os.environ
    assert not n.enabled and not n.watchdog_enabled
    assert not any([n.ready(), n.status("x"), n.stopping(), n.reloading(), n.ping_watchdog()])


def test_reads_os_environ(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with notify_socket(path) as sock:
        n = Notifier()
        assert n.watchdog_interval_s == 30.0
        assert n.ping_watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_vanished_socket_never_raises(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    assert n.status("still alive") is False
    assert caplog.text.count("sd_notify") == 1  # warned once


@pytest.mark.parametrize("usec", ["", "0", "abc", "-5"])
def test_invalid_watchdog_usec_disables_the_watchdog(tmp_path, usec):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": usec})
    assert not n.watchdog_enabled and not n.watchdog_due()


def test_a_full_socket_never_blocks_the_daemon(tmp_path, caplog):
    """Nobody reads the socket (a stuck systemd, a harness that stopped reading): once its
    queue is full, notify returns at once and says so, instead of hanging frame processing."""
    address = str(tmp_path / "notify.sock")
    with notify_socket(address):
        notifier = Notifier({"NOTIFY_SOCKET": address})
        started = time.monotonic()
        results = [notifier.status(f"frame {i} " + "x" * 200) for i in range(5000)]
        elapsed = time.monotonic() - started
    assert results[0] is True
    assert results[-1] is False and notifier.dropped > 0
    assert results.count(True) + notifier.dropped == len(results)
    assert elapsed < 10  # a blocking send would never have returned
    assert "is full" in caplog.text
