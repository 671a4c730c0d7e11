"""``guaita run``: the daemon. Composition root — wires watcher, pipeline, sink and systemd.

One thread does the work (frames are scored strictly one after another, in arrival order);
paho's network thread delivers from the outbox; the model manager checks for updates in its own
thread. Signals only set flags, the loop acts on them between frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.bundle import BundleError, Manifest
from edge.config import Config, ConfigError, load_config
from edge.decide import AutoMask, Decision
from edge.events import build_event, encode_event, event_topic
from edge.night import in_window
from edge.notify import Notifier
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from edge.publish import Publisher
from edge.state import ProcessedFrames
from edge.updates import ModelManager
from edge.watch import Arrival, FrameWatcher, catch_up_frames

log = logging.getLogger("guaita")
AUTOMASK_FILE = "automask.npz"
RESCAN_INTERVAL_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="config file (default: $GUAITA_CONFIG or /etc/guaita.toml)"
    )
    parser.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                        help="stop after this long without new frames (demo, tests)")


class EventSink:
    """Decisions → durable delivery: SQLite outbox + MQTT, or a JSONL file without a broker."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        if cfg.mqtt.enabled:
            self.outbox = Outbox(cfg.paths.state_dir / "outbox.sqlite", cfg.outbox.max_events)
            self.publisher = Publisher(cfg.mqtt, cfg.client_id, cfg.observatory, self.outbox)
            self.publisher.start()
        self.file_sink = Path(cfg.outbox.file_sink).expanduser() if cfg.outbox.file_sink else None
        self.emitted = 0

    @classmethod
    def from_config(cls, cfg: Config) -> EventSink:
        return cls(cfg)

    def emit(
        self, decision: Decision, manifest: Manifest, latency_ms: dict[str, float] | None = None
    ) -> dict[str, Any]:
        event = build_event(
            observatory=self.cfg.observatory,
            tz=self.cfg.tz,
            frame=decision.frame,
            score=float(decision.score),
            threshold=float(decision.threshold),
            manifest=manifest,
            current=decision.current,
            difference=decision.difference,
            streak=decision.streak,
            suppressed=decision.suppressed,
            flags=list(decision.flags),
            latency_ms=latency_ms or {},
            processed_utc=datetime.now(UTC),
        )
        payload = encode_event(event)
        # Durable first, then delivery: the outbox row survives SIGKILL and reboots.
        if self.outbox is not None and self.publisher is not None:
            topic = event_topic(self.cfg.mqtt.topic_prefix, self.cfg.observatory)
            if self.outbox.add(event["id"], topic, payload):
                self.publisher.wake()
        if self.file_sink is not None:
            self.file_sink.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file_sink, "ab") as fh:
                fh.write(payload + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        self.emitted += 1
        what = f"suppressed ({decision.suppressed})" if decision.suppressed else "METEOR"
        log.info("%s %s/%s score %.3f ≥ %.2f", what, decision.frame.night,
                 decision.frame.name, decision.score, decision.threshold)
        return event

    def publish_status(self, status: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.publish_status(status)

    @property
    def depth(self) -> int:
        return self.outbox.depth() if self.outbox is not None else 0

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.flush(timeout=30)  # batch mode: deliver before exiting
            self.publisher.stop(timeout=5)
        if self.outbox is not None:
            self.outbox.close()


@dataclass
class Daemon:
    cfg: Config
    notifier: Notifier = field(default_factory=Notifier)
    exit_when_idle: float | None = None

    def __post_init__(self) -> None:
        self._stop = False
        self._reload = False
        self._started = time.monotonic()
        self._last_status = 0.0
        self._last_rescan = time.monotonic()
        self._last_arrival = time.monotonic()
        self._seen_ids: set[str] = set()
        self._last_meteor_utc: str | None = None

    # ------------------------------------------------------------ setup and signals

    def _threshold(self) -> float:
        return self.models.threshold(self.models.active())

    def _on_model_change(self, kind: str, info: dict[str, Any]) -> None:
        log.warning("model %s: %s", kind, json.dumps(info, default=str))
        self._last_status = 0.0  # report the change in the next status message

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            self._stop = True

        def reload(signum: int, _frame: Any) -> None:
            self._reload = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _apply_reload(self) -> None:
        self._reload = False
        self.notifier.reloading()
        try:
            new = load_config(self.cfg.source or None)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self.notifier.ready()
            return
        old = self.cfg
        self.cfg = new
        self.pipeline.cfg = new
        self.models.cfg = new  # a newly pinned threshold applies from the next frame
        logging.getLogger().setLevel(new.logging.level)
        if (new.mqtt, new.outbox, new.observatory) != (old.mqtt, old.outbox, old.observatory):
            self.sink.close()
            self.sink = EventSink(new)
        self.models.check_now()
        log.info("config reloaded from %s", new.source)
        self.notifier.ready()

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        cfg = self.cfg
        logging.getLogger().setLevel(cfg.logging.level)
        self.notifier.status("loading model")
        try:
            self.models = ModelManager(cfg, on_change=self._on_model_change)
        except BundleError as exc:
            log.error("cannot start: %s", exc)
            self.notifier.status(f"model error: {exc}")
            return 1
        state_dir = cfg.paths.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.processed = ProcessedFrames(state_dir / "processed.sqlite")
        auto_mask = None
        if cfg.suppression.enabled and cfg.suppression.auto_mask:
            auto_mask = AutoMask.load(state_dir / AUTOMASK_FILE)
        self.pipeline = Pipeline(cfg, self.models.active, self.models.threshold,
                                 auto_mask=auto_mask)
        self.sink = EventSink(cfg)
        self.watcher = FrameWatcher(cfg.paths.images_dir)
        self.watcher.start()
        self.models.start()
        self._install_signals()
        backlog = [f for f in catch_up_frames(cfg.paths.images_dir) if
                   f.frame_id not in self.processed]
        for frame in backlog:
            self.watcher.arrivals.put(Arrival(frame, time.monotonic()))
        manifest = self.models.active().manifest
        log.info("guaita started: observatory %s, model %s@%s, threshold %.2f, watching %s, "
                 "%d frames to catch up", cfg.observatory, manifest.name, manifest.version,
                 self._threshold(), cfg.paths.images_dir, len(backlog))
        self.notifier.ready()
        self.notifier.status(f"watching {cfg.paths.images_dir}")
        try:
            while not self._stop:
                if self._reload:
                    self._apply_reload()
                self._step()
                self.notifier.ping_watchdog()  # only reached while the loop makes progress
                self._maybe_status()
                self._maybe_rescan()
                if self.exit_when_idle is not None and self.watcher.arrivals.empty() and (
                    time.monotonic() - self._last_arrival > self.exit_when_idle
                ):
                    break
        finally:
            self.notifier.stopping()
            self._finish()
        return 0

    def _step(self) -> None:
        try:
            arrival = self.watcher.arrivals.get(timeout=1.0)
        except queue.Empty:
            idle = time.monotonic() - self._last_arrival
            if idle > self.cfg.suppression.decision_timeout_s:
                self._deliver(self.pipeline.flush())
            if not self.watcher.alive:
                raise RuntimeError("file watcher died") from None
            return
        self._last_arrival = time.monotonic()
        frame = arrival.frame
        if frame.frame_id in self._seen_ids or frame.frame_id in self.processed:
            return
        local = frame.captured.replace(tzinfo=self.cfg.tz)
        if not in_window(self.cfg.night, local):
            self.pipeline.counters["outside_window"] += 1
            return
        unreadable_before = self.pipeline.counters["unreadable"]
        try:
            decisions = self.pipeline.process(frame)
        except Exception as exc:  # one bad frame or a bad new model must not stop the station
            log.exception("scoring %s failed: %s", frame.path, exc)
            self.pipeline.counters["errors"] += 1
            self.models.note_failure(exc)
            return
        if self.pipeline.counters["unreadable"] == unreadable_before:
            # An unreadable frame (still being written) may come back with its close event.
            self._seen_ids.add(frame.frame_id)
        self._deliver(decisions, arrival)

    def _deliver(self, decisions: list[Decision], arrival: Arrival | None = None) -> None:
        manifest = self.models.active().manifest
        for decision in decisions:
            if decision.detected:
                latency = dict(self.pipeline.last_latency_ms)
                if arrival is not None:
                    latency["since_file_closed"] = (time.monotonic() - arrival.seen_monotonic) * 1e3
                self.sink.emit(decision, manifest, latency)
                if not decision.suppressed:
                    self._last_meteor_utc = datetime.now(UTC).isoformat(timespec="seconds")
            self.processed.mark(decision.frame.frame_id, str(decision.frame.path),
                                float(decision.score), bool(decision.detected),
                                decision.suppressed)
            self.models.note_frame(bool(decision.detected))  # the model's raw verdict

    def status(self) -> dict[str, Any]:
        c = self.pipeline.counters
        manifest = self.models.active().manifest
        return {
            "observatory": self.cfg.observatory,
            "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "frames_seen": c["seen"],
            "frames_scored": c["scored"],
            "detected": c["detected"],
            "suppressed": c["suppressed"],
            "suppressed_by_reason": {k[11:]: v for k, v in c.items() if
                                     k.startswith("suppressed_")},
            "unreadable": c["unreadable"],
            "last_meteor_utc": self._last_meteor_utc,
            "outbox_depth": self.sink.depth,
            "last_frame": self.pipeline._reference.frame.name if self.pipeline._reference else None,
            "latency_ms": {k: round(v, 1) for k, v in self.pipeline.last_latency_ms.items()},
            "model": {"name": manifest.name, "version": manifest.version,
                      "sha256": manifest.sha256},
            "threshold": self._threshold(),
            "models": self.models.status(),
        }

    def _maybe_rescan(self) -> None:
        """Safety net under inotify (queue overflow, a missed folder): every minute, queue
        frames of the latest nights that were neither processed nor seen and are complete."""
        now = time.monotonic()
        if now - self._last_rescan < RESCAN_INTERVAL_S:
            return
        self._last_rescan = now
        settled = time.time() - 10  # written more than 10 s ago: cp has finished
        for frame in catch_up_frames(self.cfg.paths.images_dir):
            if frame.frame_id in self._seen_ids or frame.frame_id in self.processed:
                continue
            try:
                if frame.path.stat().st_mtime > settled:
                    continue
            except OSError:
                continue
            self.watcher.arrivals.put(Arrival(frame, now))

    def _maybe_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < self.cfg.mqtt.status_interval_s:
            return
        self._last_status = now
        status = self.status()
        self.sink.publish_status(status)
        self.notifier.status(
            f"{status['frames_scored']} frames scored, {status['detected']} meteors, "
            f"{status['suppressed']} suppressed, outbox {status['outbox_depth']}"
        )

    def _finish(self) -> None:
        self.watcher.stop()
        self._deliver(self.pipeline.flush())
        self.models.stop()
        if self.pipeline.auto_mask is not None:
            self.pipeline.auto_mask.save(self.cfg.paths.state_dir / AUTOMASK_FILE)
        status = self.status()
        log.info("guaita stopping: %s", json.dumps({k: status[k] for k in (
            "frames_seen", "frames_scored", "detected", "suppressed", "outbox_depth")}))
        self.sink.close()
        self.processed.close()


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    return Daemon(cfg, exit_when_idle=args.exit_when_idle).run()
