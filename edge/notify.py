"""systemd notify protocol: readiness, status line, watchdog (``Type=notify``, ``WatchdogSec=``).

A plain AF_UNIX datagram socket instead of ``systemd.daemon.notify``: the protocol is one
datagram of ``KEY=VALUE`` lines, systemd-python needs a C toolchain and libsystemd headers to
build on a Pi, and it has no watchdog helper anyway. Everything is a no-op without
``NOTIFY_SOCKET`` (running in a terminal, in tests, under another supervisor), and nothing here
ever raises: a vanished notify socket must not kill the daemon.

Watchdog: systemd restarts the service when no ``WATCHDOG=1`` arrives within ``WATCHDOG_USEC``.
The daemon calls :meth:`Notifier.ping_watchdog` only after its pipeline made progress, and the
ping is sent at most every half interval, so a hung pipeline stops the pings and gets restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    """NOTIFY_SOCKET as a sendto() address; '@name' is Linux's abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self._clock = clock
        socket_path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = _address(socket_path) if socket_path else None
        self._sock: socket.socket | None = None
        self._warned = False
        self.dropped = 0  # messages lost because the socket's queue was full
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
        # environment must not ping for its parent.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self.enabled and self.watchdog_interval_s is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of KEY=VALUE lines; False when not under systemd or on error."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Never block the pipeline on the notify socket: if its reader (systemd, or a
                # test harness) stops reading, its queue fills and a blocking send would hang
                # frame processing. A dropped STATUS/WATCHDOG is better than a stuck daemon.
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("sd_notify socket %r is full (nobody reading it); dropped %d "
                            "message(s)", self._address, self.dropped)
            return False
        except OSError as exc:
            if not self._warned:  # once: systemd gone or socket path wrong
                log.warning("sd_notify to %r failed: %s", self._address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the model is loaded and the watcher runs (also after a reload)."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(_status_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """The one-line status ``systemctl status guaita`` shows."""
        return self.notify(_status_line(text))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload (systemd ≥ 253) requires."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (a slow model load on a cold SD card)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog_due(self) -> bool:
        """Whether a ping would be sent now (half the watchdog interval has passed)."""
        if not self.watchdog_enabled:
            return False
        assert self.watchdog_interval_s is not None
        return self._last_ping is None or (
            self._clock() - self._last_ping >= self.watchdog_interval_s / 2
        )

    def ping_watchdog(self) -> bool:
        """WATCHDOG=1 if due; call it whenever the pipeline made progress. True when sent."""
        if not self.watchdog_due():
            return False
        self._last_ping = self._clock()
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(str(text).split())  # one line: the protocol is line-based
