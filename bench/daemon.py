"""The daemon over a long simulated night: latency to the broker, CPU per frame, memory.

A real Mosquitto with TLS and required client certificates (tests/broker.py, the broker the
daemon tests use), ``guaita run`` as its own process with a systemd notify socket, frames
written into the watched tree the way AllSky's ``cp`` does (create, write, close), one every
`interval_s`. A subscriber on the same broker timestamps every detection message.

Latency: from the moment the frame's file is closed to the moment its detection message
arrives at the subscriber. A candidate is decided when the next frame arrives (satellites
continue there), so this includes one frame interval; the latency from the close of that next
frame is the processing + delivery part. Mosquitto sends the daemon its PUBACK for a QoS 1
PUBLISH while handling it, in the same pass in which it queues the message to subscribers;
we time the subscriber's arrival, not the PUBACK itself.

CPU: utime + stime of the daemon process (/proc/PID/stat) from READY=1 until the last frame is
decided, divided by the frames. Memory: VmRSS sampled every `sample_s`, and VmHWM at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.plan import REPO
from edge.frames import parse_frame

log = logging.getLogger(__name__)
THING = "pujalt-pi"  # tests/broker.py's client certificate CN


# ---------------------------------------------------------------- /proc readings


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ---------------------------------------------------------------- the subscriber


@dataclass
class Arrivals:
    messages: list[tuple[float, str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def detections(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, json.loads(p)) for t, topic, p in self.messages
                    if topic.endswith("/detection")]

    def count(self, suffix: str) -> int:
        with self.lock:
            return sum(1 for _, topic, _ in self.messages if topic.endswith(suffix))


def subscribe(broker, arrivals: Arrivals) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber",
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(broker.ca), certfile=str(broker.client_cert),
                   keyfile=str(broker.client_key))
    subscribed = threading.Event()

    def on_message(_c, _u, msg) -> None:
        now = time.time()
        with arrivals.lock:
            arrivals.messages.append((now, msg.topic, bytes(msg.payload)))

    client.on_connect = lambda c, *_a: c.subscribe([("guaita/#", 1)])
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(15):
        raise RuntimeError("bench subscriber got no SUBACK")
    return client


# ---------------------------------------------------------------- the run


def write_config(work: Path, bundle: Path, broker, threshold: float | None = None) -> Path:
    config = work / "guaita.toml"
    pinned = f"threshold = {threshold}\n" if threshold is not None else ""
    config.write_text(f"""# written by bench/daemon.py
observatory = "{THING}"
timezone = "Europe/Madrid"
[paths]
images = "{work / 'images'}"
state = "{work / 'state'}"
model = "{bundle}"
[detection]
threads = 1
{pinned}[suppression]
decision_timeout_s = 5.0
[mqtt]
enabled = true
host = "{broker.host}"
port = {broker.port}
client_id = "{THING}"
topic_prefix = "guaita"
keepalive_s = 30
status_interval_s = 10
[mqtt.tls]
ca = "{broker.ca}"
cert = "{broker.client_cert}"
key = "{broker.client_key}"
""")
    return config


def _processed(state: Path) -> tuple[int, int]:
    db = state / "processed.sqlite"
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            n, d = conn.execute("SELECT COUNT(*), COALESCE(SUM(detected), 0) FROM processed"
                                ).fetchone()
        return int(n), int(d)
    except sqlite3.Error:
        return 0, 0


def _wait_ready(sock: socket.socket, proc: subprocess.Popen, log_path: Path,
                timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"guaita run exited: {log_path.read_text()[-2000:]}")
        try:
            if b"READY=1" in sock.recv(4096):
                return
        except TimeoutError:
            continue
    raise RuntimeError("guaita run never sent READY=1")


def run_daemon(work: Path, frames: Sequence[Path], bundle: Path, interval_s: float,
               sample_s: float = 2.0, threshold: float | None = None) -> dict[str, Any]:
    """Play `frames` (JPEG files named like AllSky's) into a watched tree; measure."""
    from tests.broker import run_broker  # the test suite's TLS broker harness

    work.mkdir(parents=True, exist_ok=True)
    images = work / "images"
    parsed = [parse_frame(p) for p in frames]
    if any(f is None for f in parsed):
        raise ValueError("run_daemon needs AllSky frame paths")
    with run_broker(work) as broker:
        arrivals = Arrivals()
        sub = subscribe(broker, arrivals)
        config = write_config(work, bundle, broker, threshold)
        notify = work / "notify.sock"
        notify.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        sock.settimeout(0.5)
        log_path = work / "daemon.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(notify))
        with open(log_path, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                     str(config)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    cwd=REPO)
        try:
            started = time.time()
            _wait_ready(sock, proc, log_path)
            ready_s = time.time() - started
            cpu0 = proc_cpu_s(proc.pid)
            mem_ready = proc_mem_mb(proc.pid)
            samples: list[dict[str, float]] = []
            played = [0]
            stop = threading.Event()

            def sampler() -> None:
                t0 = time.time()
                while not stop.is_set():
                    mem = proc_mem_mb(proc.pid)
                    samples.append({"t": round(time.time() - t0, 2), "frames": played[0],
                                    "rss_mb": round(mem["VmRSS"], 1)})
                    stop.wait(sample_s)

            def drain() -> None:
                """Read the notify socket as systemd does, all run long (STATUS, WATCHDOG)."""
                while not stop.is_set():
                    try:
                        sock.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        return

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            closes: dict[str, float] = {}
            order: list[str] = []
            t_start = time.monotonic()
            for i, (src, frame) in enumerate(zip(frames, parsed, strict=True)):
                data = src.read_bytes()
                dst = images / frame.night / frame.name  # type: ignore[union-attr]
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(dst, "wb") as out:  # what `cp` does: create, write, close
                    out.write(data)
                closes[dst.name] = time.time()
                order.append(dst.name)
                played[0] = i + 1
                delay = t_start + (i + 1) * interval_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            play_s = time.monotonic() - t_start
            deadline = time.monotonic() + 120 + len(frames) * 0.5
            while _processed(work / "state")[0] < len(frames) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"guaita run exited: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
            processed, detected = _processed(work / "state")
            cpu1 = proc_cpu_s(proc.pid)
            deadline = time.monotonic() + 60
            while len(arrivals.detections()) < detected and time.monotonic() < deadline:
                time.sleep(0.2)
            mem_end = proc_mem_mb(proc.pid)
            stop.set()
            thread.join(timeout=5)
            drainer.join(timeout=2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            sock.close()
            sub.disconnect()
            sub.loop_stop()
    return summarize_run(
        order=order, closes=closes, detections=arrivals.detections(), frames=len(frames),
        processed=processed, detected=detected, cpu_s=cpu1 - cpu0, samples=samples,
        mem_ready=mem_ready, mem_end=mem_end, ready_s=ready_s, play_s=play_s,
        interval_s=interval_s, statuses=arrivals.count("/status"))


def summarize_run(*, order: list[str], closes: dict[str, float],
                  detections: list[tuple[float, dict[str, Any]]], frames: int, processed: int,
                  detected: int, cpu_s: float, samples: list[dict[str, float]],
                  mem_ready: dict[str, float], mem_end: dict[str, float], ready_s: float,
                  play_s: float, interval_s: float, statuses: int) -> dict[str, Any]:
    """Latencies per detection message and the run's totals (pure: tested on made-up input)."""
    position = {name: i for i, name in enumerate(order)}
    from_close, from_next, internal = [], [], []
    alerts = 0
    seen: set[str] = set()
    for arrived, event in detections:
        name = event.get("image")
        if name not in closes or event.get("id") in seen:
            continue
        seen.add(event.get("id"))
        alerts += event.get("suppressed") is None
        from_close.append(arrived - closes[name])
        i = position[name]
        if i + 1 < len(order) and arrived >= closes[order[i + 1]]:
            from_next.append(arrived - closes[order[i + 1]])
        since = (event.get("latency_ms") or {}).get("since_file_closed")
        if since is not None:
            internal.append(since / 1000)
    return {
        "frames": frames, "processed": processed, "detections_expected": detected,
        "messages": len(seen), "alerts": alerts, "status_messages": statuses,
        "interval_s": interval_s, "play_s": round(play_s, 1), "ready_s": round(ready_s, 2),
        "latency_from_close_s": from_close, "latency_from_next_close_s": from_next,
        "latency_internal_s": internal,
        "cpu_s": round(cpu_s, 3), "cpu_ms_per_frame": round(1000 * cpu_s / max(frames, 1), 2),
        "rss_ready_mb": mem_ready.get("VmRSS"), "rss_end_mb": mem_end.get("VmRSS"),
        "peak_rss_mb": mem_end.get("VmHWM"), "rss_samples": samples,
    }
