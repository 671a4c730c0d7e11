"""AllSky → ordered frame queue.

AllSky writes each frame with ``cp`` into ``images/YYYYMMDD/``, so a file is complete only when
it is closed after writing: we react to close-write (inotify IN_CLOSE_WRITE → watchdog
FileClosedEvent), and to a rename into place for tools that write-then-move. Thumbnails and
non-frame files are ignored by `edge.frames.parse_frame`. New night folders are covered because
the observer watches the images root recursively.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from edge.frames import Frame, list_frames, night_folders, parse_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    frame: Frame
    seen_monotonic: float  # when the file was complete: start of the latency clock


def _ends_complete(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(-2, 2)
            return fh.read(2) == b"\xff\xd9"
    except OSError:
        return False


class _Handler(FileSystemEventHandler):
    def __init__(self, sink: queue.Queue[Arrival]) -> None:
        self._sink = sink

    def _offer(self, path: str | bytes) -> None:
        frame = parse_frame(path.decode() if isinstance(path, bytes) else path)
        if frame is not None:
            self._sink.put(Arrival(frame, time.monotonic()))

    def on_closed(self, event: FileClosedEvent) -> None:  # type: ignore[override]
        if not event.is_directory:
            self._offer(event.src_path)

    def on_moved(self, event: FileMovedEvent) -> None:  # type: ignore[override]
        if not event.is_directory:
            self._offer(event.dest_path)

    def on_created(self, event: DirCreatedEvent) -> None:  # type: ignore[override]
        if not event.is_directory:
            # A frame moved in from outside the tree arrives as "created", complete; a frame
            # being copied also starts as "created" but is not complete yet: its close event
            # follows. Offer only files that already end with the JPEG end-of-image marker.
            path = event.src_path
            if _ends_complete(path.decode() if isinstance(path, bytes) else path):
                self._offer(path)
            return
        # inotify watches a new night folder only after it exists: a frame copied into it
        # before the watch was added sends no close event, so look inside once. A frame still
        # being written is refused as truncated and comes back with its own close event.
        if event.is_directory:
            path = event.src_path
            for frame in list_frames(path.decode() if isinstance(path, bytes) else path):
                self._sink.put(Arrival(frame, time.monotonic()))


class FrameWatcher:
    """Watches the images root; `arrivals` yields frames as AllSky finishes writing them."""

    def __init__(self, images_root: Path) -> None:
        self.images_root = images_root
        self.arrivals: queue.Queue[Arrival] = queue.Queue()
        self._observer = Observer()

    def start(self) -> None:
        self.images_root.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(_Handler(self.arrivals), str(self.images_root), recursive=True)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._observer.is_alive()


def catch_up_frames(images_root: Path, nights: int = 2) -> list[Frame]:
    """Frames of the most recent night folders, for processing what arrived while we were down."""
    frames: list[Frame] = []
    for folder in night_folders(images_root)[-nights:]:
        frames.extend(list_frames(folder))
    return sorted(frames)


def previous_on_disk(frame: Frame, candidates: Iterable[Frame] | None = None) -> Frame | None:
    """The frame captured just before `frame` in the same night folder, found on disk."""
    pool = candidates if candidates is not None else list_frames(frame.path.parent)
    earlier = [f for f in pool if f.night == frame.night and f.captured < frame.captured]
    return max(earlier) if earlier else None
