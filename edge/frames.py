"""The AllSky file layout: ``images/YYYYMMDD/image-YYYYMMDDHHMMSS.jpg``.

The folder is the *evening's* date (AllSky uses ``date -d '12 hours ago'``), the file name is
the camera's local capture time. Everything here is pure: names in, typed frames out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

NIGHT_RE = re.compile(r"^(\d{8})$")
FRAME_RE = re.compile(r"^image-(\d{14})\.(jpg|jpeg|png)$")  # AllSky writes lower case
IGNORED_DIRS = {"thumbnails", "keogram", "startrails", "videos", "timelapse"}


@dataclass(frozen=True, order=True)
class Frame:
    """One saved AllSky frame. Ordered by (night, capture time)."""

    night: str  # YYYYMMDD, the evening's date
    captured: datetime  # naive local time, from the file name
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frame_id(self) -> str:
        """Stable across restarts and machines: night + capture stamp."""
        return f"{self.night}-{self.captured:%Y%m%d%H%M%S}"


def night_of(captured: datetime) -> str:
    """The evening a capture belongs to, as AllSky names the folder (12 hours ago)."""
    return (captured - timedelta(hours=12)).strftime("%Y%m%d")


def frame_filename(captured: datetime) -> str:
    return f"image-{captured:%Y%m%d%H%M%S}.jpg"


def parse_frame(path: str | Path) -> Frame | None:
    """A Frame for an AllSky frame path, None for anything else (thumbnails, temp files)."""
    path = Path(path)
    match = FRAME_RE.match(path.name)
    if not match or path.parent.name in IGNORED_DIRS:
        return None
    try:
        captured = datetime.strptime(match.group(1), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    folder = path.parent.name
    night = folder if NIGHT_RE.match(folder) else night_of(captured)
    return Frame(night=night, captured=captured, path=path)


def list_frames(root: str | Path) -> list[Frame]:
    """All frames under a night folder or a whole images tree, in capture order."""
    root = Path(root)
    if root.is_file():
        frame = parse_frame(root)
        return [frame] if frame else []
    frames = [f for p in root.rglob("*") if p.is_file() and (f := parse_frame(p))]
    return sorted(frames)


def night_folders(images_root: str | Path) -> list[Path]:
    root = Path(images_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and NIGHT_RE.match(p.name))


def is_consecutive(previous: Frame, current: Frame, max_gap_s: float) -> bool:
    """Whether `previous` is a valid reference for differencing `current`."""
    if previous.night != current.night:
        return False
    gap = (current.captured - previous.captured).total_seconds()
    return 0 < gap <= max_gap_s
