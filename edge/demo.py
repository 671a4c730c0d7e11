"""``guaita demo`` (= ``make demo``): a simulated AllSky night through the real daemon.

1. simulate one night (ground truth known);
2. start ``guaita run`` as a child process with a demo config (no broker: events go to a JSONL
   file sink), and wait for its systemd READY=1 on a notify socket of our own;
3. copy the frames into the watched folder one by one, the way AllSky does (``cp``);
4. stop the daemon and compare what it reported with the truth.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "guaita-r18-sim"
PACKAGED_MODEL = Path("/usr/share/guaita/models/default")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="work folder")
    parser.add_argument("--frames", type=int, default=120, help="frames in the night")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--meteor-rate", type=float, default=0.06)
    parser.add_argument("--interval", type=float, default=0.25,
                        help="seconds between frames while playing (AllSky: 30)")
    parser.add_argument("--model", type=Path, help="model bundle (default: the shipped one)")
    parser.add_argument("--width", type=int, default=1304)
    parser.add_argument("--height", type=int, default=976)


def _model_path(arg: Path | None) -> Path:
    for candidate in (arg, DEFAULT_MODEL, PACKAGED_MODEL):
        if candidate is not None and (candidate / "manifest.json").is_file():
            return candidate.resolve()
    raise SystemExit("guaita demo: no model bundle found (models/guaita-r18-sim); use --model")


def _write_config(out: Path, model: Path) -> Path:
    config = out / "guaita-demo.toml"
    config.write_text(
        f"""# written by guaita demo
observatory = "demo"
timezone = "Europe/Madrid"

[paths]
images = "{out / 'allsky' / 'images'}"
state = "{out / 'state'}"
model = "{model}"

[outbox]
file_sink = "{out / 'detections.jsonl'}"

[mqtt]
enabled = false
status_interval_s = 5

[suppression]
decision_timeout_s = 5
"""
    )
    return config


def _wait_ready(sock: socket.socket, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"guaita demo: the daemon exited early (code {proc.returncode})")
        try:
            if b"READY=1" in sock.recv(4096):
                return
        except TimeoutError:
            continue
    raise SystemExit("guaita demo: the daemon did not become ready")


def _play(staging_images: Path, target_images: Path, interval: float) -> int:
    frames = sorted(staging_images.rglob("image-*.jpg"))
    for path in frames:
        night_dir = target_images / path.parent.name
        night_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, night_dir / path.name)  # open-write-close, like cp
        time.sleep(interval)
    return len(frames)


def _scores(db: Path) -> dict[str, float]:
    """Every frame's score as the daemon recorded it (file name → score)."""
    import sqlite3

    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        return {Path(path).name: float(score or 0.0)
                for path, score in conn.execute("SELECT path, score FROM processed")}


def _summarise(truth_csv: Path, detections: Path, db: Path | None = None) -> dict[str, int]:
    with open(truth_csv, newline="") as fh:
        truth = {Path(row["file"]).name: row for row in csv.DictReader(fh)}
    lines = detections.read_text().splitlines() if detections.exists() else []
    events = [json.loads(line) for line in lines]
    print(f"\n{'frame':28} {'score':>6}  {'guaita says':14} truth")
    alerted = set()
    for event in events:
        row = truth.get(event["image"], {})
        kind = ("meteor" if row.get("meteor") == "1" else "satellite" if row.get("satellite") ==
                "1" else "aircraft" if row.get("aircraft") == "1" else "nothing")
        said = f"suppressed:{event['suppressed']}" if event["suppressed"] else "METEOR"
        if not event["suppressed"]:
            alerted.add(event["image"])
        print(f"{event['image']:28} {event['score']:6.3f}  {said:14} {kind}")
    meteors = {name for name, row in truth.items() if row["meteor"] == "1"}
    # The meteors it did not alert on, so a quiet demo still shows what it saw.
    scores = _scores(db) if db is not None else {}
    for name in sorted(meteors - alerted):
        peak = truth[name].get("meteor_peak", "")
        said = "missed" if name in scores else "not scored"
        score = f"{scores[name]:6.3f}" if name in scores else "     –"
        print(f"{name:28} {score}  {said:14} meteor (peak {peak} grey levels)")
    summary = {
        "frames": len(truth),
        "meteors_in_truth": len(meteors),
        "meteors_alerted": len(meteors & alerted),
        "false_alerts": len(alerted - meteors),
        "suppressed_candidates": sum(1 for e in events if e["suppressed"]),
    }
    print("\nsummary:", json.dumps(summary))
    return summary


def run(args: argparse.Namespace) -> int:
    from training.simulate import simulate  # numpy + OpenCV only

    model = _model_path(args.model)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"simulating {args.frames} frames of one night into {out / 'sim'} …")
    truth_csv = simulate(out / "sim", nights=1, frames=args.frames, seed=args.seed,
                         width=args.width, height=args.height, meteor_rate=args.meteor_rate,
                         progress=True)
    config = _write_config(out, model)
    (out / "allsky" / "images").mkdir(parents=True)
    notify_path = Path(tempfile.mkdtemp(prefix="guaita-demo-")) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    cmd = [sys.executable, "-m", "edge.cli", "run", "--config", str(config)]
    print("starting the daemon:", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    try:
        _wait_ready(sock, proc, timeout=120)
        print(f"daemon ready; playing the night into {out / 'allsky' / 'images'} …")
        played = _play(out / "sim" / "images", out / "allsky" / "images", args.interval)
        print(f"played {played} frames; letting the daemon finish …")
        _wait_until_done(out / "state" / "processed.sqlite", played, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        sock.close()
    _summarise(truth_csv, out / "detections.jsonl", out / "state" / "processed.sqlite")
    print(f"events (JSON, as sent over MQTT): {out / 'detections.jsonl'}")
    return 0 if proc.returncode == 0 else 1


def _wait_until_done(db: Path, frames: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the daemon has scored every frame but the last (held for satellite checks)."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(db) as conn:
                done = conn.execute("SELECT COUNT(*) FROM processed").fetchone()[0]
        except sqlite3.Error:
            done = 0
        if done >= frames - 1:
            return
        time.sleep(0.5)
