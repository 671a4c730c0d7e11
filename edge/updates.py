"""Model updates: a signed S3 channel → verified, smoke-tested bundle → swap between frames.

Channel layout (written by ``guaita model publish``)::

    <prefix>/<channel>/latest.json        ChannelEntry (what to install), exact bytes signed
    <prefix>/<channel>/latest.json.sig    detached Ed25519 signature (64 raw bytes)
    <prefix>/<name>/<version>/bundle.tar.gz

State dir layout (``paths.state``/models, shared with ``guaita model list|current|rollback``)::

    active -> <dir>       symlink to the bundle in use (absent: the shipped paths.model)
    previous -> <dir>     what a rollback returns to
    <name>-<version>/     installed bundles (only active and previous are kept)
    staging/              downloads (resumable .part files) and extraction
    state.json            blocked (rolled-back) versions, the trial of a new model, history

A model can never take a station down: every step before the switch only *rejects* (the old
scorer keeps scoring), and after the switch a trial watches the new one (load failures at
start, repeated crashes, an absurd detection rate) and rolls back to the previous one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import ssl
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import MANIFEST_NAME, Bundle, BundleError, load_bundle, sha256_file
from edge.config import Config
from edge.model import Scorer, open_scorer
from edge.signing import SigningError, load_public_key, verify

log = logging.getLogger(__name__)

ENTRY_FORMAT = 1
LATEST = "latest.json"
SIGNATURE_SUFFIX = ".sig"
TARBALL = "bundle.tar.gz"
MAX_ENTRY_BYTES = 64 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
RETRY_S = 600.0  # after a network error, try again sooner than the normal interval
HISTORY_KEEP = 50

ChangeCallback = Callable[[str, dict[str, Any]], None]


class UpdateRejected(Exception):
    """This channel entry must not be installed (bad signature, sha256, archive, model...)."""


class UpdateUnavailable(Exception):
    """The channel could not be read or the download did not finish; try again later."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- versions


def _version_parts(version: str) -> list[tuple[int, int, str]]:
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return [(2, int(p), "") if p.isdigit() else (0, 0, p.lower()) for p in parts]


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1. Dotted numbers and dates compare numerically; "1.0rc1" < "1.0" < "1.0.1"."""
    pa, pb = _version_parts(a), _version_parts(b)
    end = (1, 0, "")  # between a pre-release tag (0) and a further number (2)
    n = max(len(pa), len(pb))
    pa, pb = pa + [end] * (n - len(pa)), pb + [end] * (n - len(pb))
    return (pa > pb) - (pa < pb)


def guaita_version() -> str:
    from edge.cli import package_version  # the installed package's version

    return package_version()


# ---------------------------------------------------------------- channel entry


@dataclass(frozen=True)
class ChannelEntry:
    """``<prefix>/<channel>/latest.json``: the signed description of one release."""

    channel: str
    name: str
    version: str
    key: str  # S3 key of the tarball
    sha256: str  # of the tarball
    size: int  # of the tarball, bytes
    model_sha256: str  # of model.onnx inside (also in the bundle manifest)
    recommended_threshold: float
    min_guaita_version: str = "0.1.0"
    release_notes: str = ""
    published_at: str = ""
    key_id: str = ""  # fingerprint of the signing key (for error messages)
    format: int = ENTRY_FORMAT

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.version}"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes) -> ChannelEntry:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UpdateRejected(f"channel manifest is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UpdateRejected("channel manifest must be a JSON object")
        if data.get("format") != ENTRY_FORMAT:
            raise UpdateRejected(f"channel manifest format {data.get('format')!r} not supported")
        kinds = {"channel": str, "name": str, "version": str, "key": str, "sha256": str,
                 "size": int, "model_sha256": str, "recommended_threshold": (int, float),
                 "min_guaita_version": str, "release_notes": str, "published_at": str,
                 "key_id": str}
        for key, kind in kinds.items():
            if key not in data and key in ("min_guaita_version", "release_notes",
                                           "published_at", "key_id"):
                continue
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise UpdateRejected(f"channel manifest: {key!r} missing or of the wrong type")
        unknown = set(data) - set(kinds) - {"format"}
        if unknown:
            raise UpdateRejected(f"channel manifest: unknown keys {sorted(unknown)}")
        entry = cls(**data)
        for key in ("name", "version"):
            if not NAME_RE.match(getattr(entry, key)):
                raise UpdateRejected(f"channel manifest: {key} {getattr(entry, key)!r} is not "
                                     "a safe name (letters, digits, . _ + -)")
        for key in ("sha256", "model_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", getattr(entry, key)):
                raise UpdateRejected(f"channel manifest: {key} must be 64 lowercase hex digits")
        if entry.size <= 0:
            raise UpdateRejected("channel manifest: size must be positive")
        return entry


def channel_keys(prefix: str, channel: str) -> tuple[str, str]:
    base = f"{prefix.strip('/')}/{channel}/{LATEST}"
    return base, base + SIGNATURE_SUFFIX


def tarball_key(prefix: str, name: str, version: str) -> str:
    return f"{prefix.strip('/')}/{name}/{version}/{TARBALL}"


# ---------------------------------------------------------------- S3 access


def iot_credentials(cfg: Config, timeout_s: float = 30.0) -> dict[str, str]:
    """Temporary AWS credentials from the AWS IoT credentials provider (X.509 → role alias).

    GET https://<credentials endpoint>/role-aliases/<alias>/credentials over mutual TLS with the
    device certificate the MQTT client already uses; the thing name header lets the role's
    policy use ``${credentials-iot:ThingName}``.
    """
    u, tls = cfg.updates, cfg.mqtt.tls
    base = u.credentials_provider if "://" in u.credentials_provider \
        else f"https://{u.credentials_provider}"
    url = f"{base.rstrip('/')}/role-aliases/{urllib.parse.quote(u.role_alias)}/credentials"
    context = ssl.create_default_context(cafile=tls.ca or None)
    context.load_cert_chain(os.path.expanduser(tls.cert), os.path.expanduser(tls.key))
    request = urllib.request.Request(url, headers={"x-amzn-iot-thingname": cfg.client_id})
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout_s) as resp:
            body = resp.read(MAX_ENTRY_BYTES)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace")
        raise UpdateUnavailable(f"IoT credentials provider {url}: HTTP {exc.code} {detail}") \
            from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpdateUnavailable(f"IoT credentials provider {url}: {exc}") from None
    try:
        creds = json.loads(body)["credentials"]
        return {"aws_access_key_id": creds["accessKeyId"],
                "aws_secret_access_key": creds["secretAccessKey"],
                "aws_session_token": creds["sessionToken"]}
    except (ValueError, KeyError, TypeError):
        raise UpdateUnavailable(f"IoT credentials provider {url}: unexpected answer") from None


def s3_client(cfg: Config) -> Any:
    """boto3 S3 client: IoT credentials provider if configured, else the profile/default chain."""
    import boto3  # slow import: only when a check runs
    from botocore.config import Config as BotoConfig

    u = cfg.updates
    if u.credentials_provider:
        session = boto3.Session(region_name=u.region, **iot_credentials(cfg))
    else:
        session = boto3.Session(profile_name=u.aws_profile or None, region_name=u.region)
    return session.client(
        "s3", endpoint_url=u.endpoint_url or None,
        config=BotoConfig(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}),
    )


def _read_object(client: Any, bucket: str, key: str, limit: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read(limit + 1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise UpdateUnavailable(f"s3://{bucket}/{key}: {code}") from None
    except BotoCoreError as exc:
        raise UpdateUnavailable(f"s3://{bucket}/{key}: {exc}") from None
    if len(data) > limit:
        raise UpdateRejected(f"s3://{bucket}/{key}: larger than {limit} bytes")
    return data


def read_entry(client: Any, cfg: Config) -> tuple[bytes, bytes, bytes]:
    """The channel's latest.json, its signature, and a digest of both (so an entry rejected
    once is not verified, downloaded and rejected again every interval)."""
    u = cfg.updates
    entry_key, sig_key = channel_keys(u.prefix, u.channel)
    raw = _read_object(client, u.bucket, entry_key, MAX_ENTRY_BYTES)
    signature = _read_object(client, u.bucket, sig_key, 1024)
    return raw, signature, hashlib.sha256(raw + b"\0" + signature).digest()


def verify_entry(raw: bytes, signature: bytes, digest: bytes, cfg: Config,
                 public_key: Any) -> ChannelEntry:
    """Check the signature, then parse; _Rejected (carrying the digest) otherwise."""
    u = cfg.updates
    entry_key, _ = channel_keys(u.prefix, u.channel)
    try:
        verify(raw, signature, public_key)
    except SigningError as exc:
        raise _Rejected(digest, f"s3://{u.bucket}/{entry_key}", str(exc)) from None
    try:
        entry = ChannelEntry.parse(raw)
    except UpdateRejected as exc:
        raise _Rejected(digest, f"s3://{u.bucket}/{entry_key}", str(exc)) from None
    if entry.channel != u.channel:
        raise _Rejected(digest, entry.label, f"entry is for channel {entry.channel!r}, "
                        f"not {u.channel!r} (a copied manifest?)")
    if not entry.key.startswith(u.prefix.strip("/") + "/"):
        raise _Rejected(digest, entry.label, f"tarball key {entry.key!r} is outside the prefix")
    return entry


class _Rejected(UpdateRejected):
    def __init__(self, digest: bytes, what: str, reason: str):
        super().__init__(reason)
        self.digest, self.what = digest, what


def download(client: Any, bucket: str, entry: ChannelEntry, staging: Path, max_bytes: int) -> Path:
    """Fetch the tarball into staging (resuming a .part with a Range request), verify size and
    sha256. UpdateUnavailable for an interrupted download (kept for resuming), UpdateRejected
    when the bytes are wrong."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"s3://{bucket}/{entry.key}"
    if entry.size > max_bytes:
        raise UpdateRejected(f"tarball is {entry.size / 1e6:.1f} MB, over updates.max_bundle_mb "
                             f"({max_bytes / 1e6:.0f} MB)")
    staging.mkdir(parents=True, exist_ok=True)
    part = staging / f"{entry.sha256}.part"
    for stale in staging.glob("*.part"):
        if stale != part:  # an abandoned download of an older entry
            stale.unlink(missing_ok=True)
    try:
        length = client.head_object(Bucket=bucket, Key=entry.key)["ContentLength"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise UpdateUnavailable(f"{where}: {code}") from None
    except BotoCoreError as exc:
        raise UpdateUnavailable(f"{where}: {exc}") from None
    if length != entry.size:
        part.unlink(missing_ok=True)
        raise UpdateRejected(f"{where} is {length} bytes but the signed manifest says "
                             f"{entry.size} (truncated or replaced upload)")
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:
        part.unlink()
        have = 0
    if have < entry.size:
        try:
            extra = {"Range": f"bytes={have}-"} if have else {}
            response = client.get_object(Bucket=bucket, Key=entry.key, **extra)
            if have and not response.get("ContentRange"):
                have = 0  # the server ignored the range: start over
            with open(part, "ab" if have else "wb") as fh:
                for chunk in response["Body"].iter_chunks(1 << 20):
                    if fh.tell() + len(chunk) > entry.size:
                        raise UpdateRejected(f"{where}: more bytes than the signed size "
                                             f"{entry.size}")
                    fh.write(chunk)
        except (BotoCoreError, ClientError, OSError) as exc:
            got = part.stat().st_size if part.exists() else 0
            raise UpdateUnavailable(f"{where}: download interrupted at {got} of {entry.size} "
                                    f"bytes ({type(exc).__name__}); it resumes on the next "
                                    "check") from None
        if have:
            log.info("resumed %s from byte %d", where, have)
    got = part.stat().st_size
    if got != entry.size:
        raise UpdateUnavailable(f"{where}: truncated download, {got} of {entry.size} bytes; "
                                "it resumes on the next check")
    actual = sha256_file(part)
    if actual != entry.sha256:
        part.unlink()
        raise UpdateRejected(f"{where}: sha256 mismatch: downloaded {actual[:12]}…, the signed "
                             f"manifest says {entry.sha256[:12]}… (tampered or corrupted)")
    final = staging / f"{entry.sha256}.tar.gz"
    os.replace(part, final)
    return final


def extract_bundle(tarball: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack a bundle tarball safely (regular files only, bounded size); return its root."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = tar.getmembers()
            if len(members) > 16:
                raise UpdateRejected(f"archive has {len(members)} entries; a bundle has 2")
            odd = [m.name for m in members if not (m.isfile() or m.isdir())]
            if odd:
                raise UpdateRejected(f"archive holds links or special files: {odd[:3]}")
            total = sum(m.size for m in members)
            if total > max_bytes:
                raise UpdateRejected(f"archive expands to {total} bytes, over {max_bytes}")
            tar.extractall(dest, filter="data")  # refuses absolute paths and ../
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UpdateRejected(f"not a valid bundle archive: {exc}") from None
    if (dest / MANIFEST_NAME).is_file():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_NAME).is_file():
        return subdirs[0]
    raise UpdateRejected(f"archive holds no {MANIFEST_NAME}")


# ---------------------------------------------------------------- smoke test


def _smoke_frames() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2021)
    sky = np.clip(rng.normal(30, 3, (240, 320)), 0, 255).astype(np.uint8)
    noisy = np.clip(sky + rng.normal(0, 3, sky.shape), 0, 255).astype(np.uint8)
    streak = noisy.copy()
    for i in range(140):  # a bright diagonal trail
        streak[40 + i, 60 + i: 62 + i] = 200
    return {"still": (sky, sky), "noise": (sky, noisy), "streak": (sky, streak)}


def smoke_test(scorer: Scorer, max_s: float) -> dict[str, float]:
    """Known inputs must give probabilities in [0, 1] with the right output shape (Scorer checks
    it), and one frame must score within max_s. Raises BundleError."""
    results: dict[str, float] = {}
    slowest = 0.0
    for name, (previous, current) in _smoke_frames().items():
        started = time.perf_counter()
        try:
            probability = scorer.score(previous, current)
        except BundleError:
            raise
        except Exception as exc:  # onnxruntime errors are untyped
            raise BundleError(f"scoring the {name!r} smoke frame failed: {exc}") from None
        slowest = max(slowest, time.perf_counter() - started)
        if not 0.0 <= probability <= 1.0:  # NaN fails this too
            raise BundleError(f"smoke frame {name!r} scored {probability}, not a probability")
        results[name] = round(probability, 6)
    if slowest > max_s:
        raise BundleError(f"one frame took {slowest:.1f} s to score, over updates.smoke_max_s "
                          f"({max_s:g} s)")
    results["slowest_ms"] = round(slowest * 1000, 1)
    return results


def load_checked(path: Path, threads: int, max_s: float = math.inf) -> Scorer:
    """open_scorer + smoke_test: the only way a model becomes active. The latency bound is for
    accepting updates; a model we fall back to only has to work."""
    scorer = open_scorer(path, threads=threads)
    smoke_test(scorer, max_s)
    return scorer


# ---------------------------------------------------------------- state dir


def _describe(bundle: Bundle, path: Path) -> dict[str, Any]:
    m = bundle.manifest
    return {"name": m.name, "version": m.version, "label": bundle.label, "sha256": m.sha256,
            "recommended_threshold": m.recommended_threshold, "created_at": m.created_at,
            "path": str(path)}


class ModelStore:
    """The models/ directory: pointers, installed bundles, persistent state. No onnxruntime."""

    def __init__(self, root: Path, default: Path):
        self.root = root
        self.default = default
        self.staging = root / "staging"
        self.state_path = root / "state.json"

    # -- pointers
    def _link(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        return Path(os.path.realpath(link))

    def active_path(self) -> Path:
        """The bundle the daemon should run: the active pointer, else the shipped model."""
        return self._link("active") or self.default

    def previous_path(self) -> Path | None:
        return self._link("previous")

    def _point(self, name: str, target: Path | None) -> None:
        link = self.root / name
        if target is None:
            link.unlink(missing_ok=True)
            return
        tmp = self.root / f".{name}.{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.realpath(target), tmp)
        os.replace(tmp, link)  # atomic: readers see the old or the new pointer, never none

    def set_pointers(self, active: Path, previous: Path | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # previous first: a crash between the two leaves active unchanged.
        self._point("previous", previous)
        self._point("active", active)

    # -- installed bundles
    def install(self, source: Path, dir_name: str) -> Path:
        target = self.root / dir_name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(source), target)
        return target

    def prune(self) -> None:
        """Delete installed bundles that are neither active nor previous (SD cards are small)."""
        keep = {self.active_path(), self.previous_path()}
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry.name != "staging" \
                    and Path(os.path.realpath(entry)) not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def installed(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and p.name != "staging")

    # -- state.json
    @contextlib.contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write state.json under a file lock (the CLI and the daemon share it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read_state()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, self.state_path)
        finally:
            os.close(fd)

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data.setdefault("blocked", {})
        data.setdefault("history", [])
        data.setdefault("trial", None)
        return data

    def record(self, kind: str, message: str, **extra: Any) -> None:
        with self.state() as st:
            st["history"] = [*st["history"], {"at": now_iso(), "kind": kind,
                                              "message": message, **extra}][-HISTORY_KEEP:]

    def block(self, label: str, reason: str) -> None:
        with self.state() as st:
            st["blocked"][label] = {"at": now_iso(), "reason": reason}

    def describe(self, path: Path | None) -> dict[str, Any] | None:
        if path is None:
            return None
        try:
            return _describe(load_bundle(path, verify=False), path)
        except BundleError as exc:
            return {"label": "?", "path": str(path), "error": str(exc)}


def resolve_active_bundle(cfg: Config) -> Path:
    """The bundle the daemon runs (for `guaita scan` and friends): no state is touched."""
    return ModelStore(cfg.paths.state_dir / "models", cfg.paths.model_path).active_path()


# ---------------------------------------------------------------- the manager


@dataclass
class _Trial:
    label: str
    frames: int = 0
    detections: int = 0
    failures: int = 0


@dataclass
class _CheckState:
    last_check: str | None = None
    last_result: str = "never checked"
    last_rejection: dict[str, Any] | None = None
    rejected_digests: set[bytes] = field(default_factory=set)


class ModelManager:
    """Owns the active Scorer; checks the channel, swaps between frames, rolls back.

    on_change(kind, info) is called with kind "switched", "rejected", "skipped" or
    "rolled_back" (and "rollback_failed" when nothing loadable is left to return to).
    """

    def __init__(self, cfg: Config, on_change: ChangeCallback | None = None, *,
                 poll_s: float = 10.0, client_factory: Callable[[], Any] | None = None,
                 this_version: str | None = None):
        self.cfg = cfg
        self.store = ModelStore(cfg.paths.state_dir / "models", cfg.paths.model_path)
        self._on_change = on_change
        self._poll_s = poll_s
        self._client_factory = client_factory or (lambda: s3_client(cfg))
        self._version = this_version or guaita_version()
        self._lock = threading.Lock()  # guards the quick swap of what active() returns
        self._op_lock = threading.RLock()  # one check/switch/rollback at a time
        self._check = _CheckState()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_requested = False
        self._rollback_reason: str | None = None
        self._trial: _Trial | None = None
        self._scorer, self._path = self._load_at_start()

    # -- what the daemon calls per frame
    def active(self) -> Scorer:
        return self._scorer

    def threshold(self, scorer: Scorer | None = None) -> float:
        """The pinned detection.threshold, else the (given or active) model's recommended one."""
        pinned = self.cfg.detection.threshold
        if pinned is not None:
            return pinned
        return (scorer or self._scorer).manifest.recommended_threshold

    def note_frame(self, detected: bool) -> None:
        """Feed the rate guard of a model on trial; an absurd rate rolls it back."""
        with self._lock:
            trial = self._trial
            if trial is None:
                return
            trial.frames += 1
            trial.detections += bool(detected)
            trial.failures = 0
            u = self.cfg.updates
            rate = trial.detections / trial.frames
            if trial.frames >= u.guard_min_frames and rate > u.guard_max_rate:
                self._trial = None
                reason = (f"detection rate {rate:.0%} over its first {trial.frames} frames "
                          f"exceeds updates.guard_max_rate {u.guard_max_rate:.0%}")
            elif trial.frames >= u.guard_window_frames:
                self._trial = None
                reason = ""
            else:
                return
        if reason:
            self._request_rollback(reason)
        else:
            log.info("model %s passed its trial: %d detections in %d frames",
                     trial.label, trial.detections, trial.frames)
            with self.store.state() as st:
                st["trial"] = None

    def note_failure(self, exc: BaseException) -> None:
        """The daemon could not score a frame with the active model; three in a row while the
        model is on trial roll it back."""
        with self._lock:
            trial = self._trial
            if trial is None:
                return
            trial.failures += 1
            if trial.failures < 3:
                return
            self._trial = None
        self._request_rollback(f"scoring failed 3 frames in a row: {exc}")

    # -- background checks
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="guaita-models", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
            self._thread = None

    def check_now(self) -> None:
        """SIGHUP or an MQTT "model available" message: check soon, in the background."""
        if self._thread and self._thread.is_alive():
            self._check_requested = True
            self._wake.set()
        else:
            threading.Thread(target=self._sync_and_check, name="guaita-models-check",
                             daemon=True).start()

    def _sync_and_check(self) -> None:
        self.sync_pointer()
        self.check()

    def _run(self) -> None:
        u = self.cfg.updates
        next_check = time.monotonic()  # first check right after start
        while not self._stop.is_set():
            wait = min(self._poll_s, max(0.0, next_check - time.monotonic()))
            self._wake.wait(wait if u.enabled else self._poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                reason, self._rollback_reason = self._rollback_reason, None
                if reason:
                    self.rollback(reason)
                self.sync_pointer()
                due = u.enabled and time.monotonic() >= next_check
                if self._check_requested or due:
                    self._check_requested = False
                    result = self.check()
                    retry = result.startswith("error")
                    next_check = time.monotonic() + (min(RETRY_S, u.interval_min * 60) if retry
                                                     else u.interval_min * 60)
            except Exception:  # the checker must outlive any bug
                log.exception("model manager: unexpected error")

    def _request_rollback(self, reason: str) -> None:
        if self._thread and self._thread.is_alive():
            self._rollback_reason = reason  # do the load off the frame thread
            self._wake.set()
        else:
            self.rollback(reason)

    # -- the channel
    def check(self) -> str:
        """One synchronous channel check; returns and records a one-line result."""
        with self._op_lock:
            result = self._check_once()
            self._check.last_check = now_iso()
            self._check.last_result = result
            return result

    def _check_once(self) -> str:
        u = self.cfg.updates
        if not u.enabled:
            log.info("model updates are disabled (updates.enabled = false)")
            return "disabled"
        current = self._scorer.bundle.label
        entry: ChannelEntry | None = None
        try:
            public_key = load_public_key(u.public_key)
            client = self._client_factory()
            raw, signature, digest = read_entry(client, self.cfg)
            if digest in self._check.rejected_digests:
                log.debug("model channel %s: unchanged since rejected", u.channel)
                return "skipped: the channel entry was already rejected"
            entry = verify_entry(raw, signature, digest, self.cfg, public_key)
            skip = self._skip_reason(entry)
            if skip == "up-to-date":
                log.debug("model channel %s: %s, running %s", u.channel, entry.label, current)
                return skip
            if skip:
                self._check.rejected_digests.add(digest)
                log.info("model update skipped: %s: %s; still running %s",
                         entry.label, skip, current)
                self._emit("skipped", {"candidate": entry.label, "reason": skip,
                                       "active": current})
                return f"skipped: {skip}"
            log.info("model update: %s available on channel %s (running %s), downloading",
                     entry.label, u.channel, current)
            tarball = download(client, u.bucket, entry, self.store.staging,
                               int(u.max_bundle_mb * 1e6))
            self._install(entry, tarball)
            return f"switched to {entry.label}"
        except _Rejected as exc:
            self._check.rejected_digests.add(exc.digest)
            return self._reject(exc.what, str(exc))
        except UpdateRejected as exc:
            if entry is not None:
                self._check.rejected_digests.add(digest)
            return self._reject(entry.label if entry else u.channel, str(exc))
        except SigningError as exc:  # our own public key is unusable
            log.error("model updates: %s", exc)
            return f"error: {exc}"
        except UpdateUnavailable as exc:
            log.warning("model update check failed: %s; still running %s", exc, current)
            return f"error: {exc}"
        except Exception as exc:  # network stacks raise many things; never kill the checker
            log.warning("model update check failed: %s: %s; still running %s",
                        type(exc).__name__, exc, current)
            return f"error: {type(exc).__name__}: {exc}"

    def _skip_reason(self, entry: ChannelEntry) -> str:
        active = self._scorer.manifest
        if compare_versions(entry.version, active.version) <= 0:
            return "up-to-date"
        blocked = self.store.read_state()["blocked"].get(entry.label)
        if blocked:
            return f"it was rolled back ({blocked.get('reason', '?')})"
        return self._too_new(entry.min_guaita_version)

    def _too_new(self, needed: str) -> str:
        if "unknown" in self._version:  # a source checkout: no version to compare
            return ""
        if compare_versions(needed, self._version) > 0:
            return f"needs guaita >= {needed}, this is {self._version}"
        return ""

    def _install(self, entry: ChannelEntry, tarball: Path) -> None:
        u = self.cfg.updates
        work = self.store.staging / f"extract-{uuid.uuid4().hex[:8]}"
        for stale in self.store.staging.glob("extract-*"):
            shutil.rmtree(stale, ignore_errors=True)
        installed: Path | None = None
        try:
            root = extract_bundle(tarball, work, int(u.max_bundle_mb * 4e6))
            try:
                bundle = load_bundle(root)
            except BundleError as exc:
                raise UpdateRejected(f"invalid bundle: {exc}") from None
            m = bundle.manifest
            if (m.name, m.version) != (entry.name, entry.version):
                raise UpdateRejected(f"archive holds {bundle.label}, the channel says "
                                     f"{entry.label}")
            if m.sha256 != entry.model_sha256:
                raise UpdateRejected("model.onnx sha256 differs from the signed manifest")
            too_new = self._too_new(m.min_guaita_version)
            if too_new:
                raise UpdateRejected(too_new)
            installed = self.store.install(root, entry.dir_name)
            try:
                scorer = load_checked(installed, self.cfg.detection.threads, u.smoke_max_s)
            except BundleError as exc:
                raise UpdateRejected(f"fails to load: {exc}") from None
            self._switch(scorer, installed, previous=self._path, trial=True,
                         why=f"update from channel {u.channel}", notes=entry.release_notes)
            installed = None
        except UpdateRejected:
            if installed is not None:
                shutil.rmtree(installed, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            tarball.unlink(missing_ok=True)

    # -- switching
    def _switch(self, scorer: Scorer, path: Path, previous: Path | None, trial: bool,
                why: str, notes: str = "") -> None:
        with self._op_lock:
            old = self._scorer.bundle.label
            self.store.set_pointers(path, previous)
            with self._lock:
                self._scorer, self._path = scorer, path  # the next active() returns it
                self._trial = _Trial(scorer.bundle.label) if trial else None
            with self.store.state() as st:
                st["trial"] = ({"label": scorer.bundle.label, "since": now_iso(), "starts": 0}
                               if trial else None)
            self.store.prune()
        message = f"model switched: {old} → {scorer.bundle.label} ({why}); {self._threshold_note()}"
        log.info(message)
        self.store.record("switched", message)
        self._emit("switched", {"from": old, "to": scorer.bundle.label, "reason": why,
                                "release_notes": notes, "threshold": self.threshold()})

    def _threshold_note(self) -> str:
        if self.cfg.detection.threshold is not None:
            return f"threshold {self.cfg.detection.threshold:g} (pinned in detection.threshold)"
        return f"threshold {self.threshold():g} (recommended by the model)"

    def _reject(self, what: str, reason: str) -> str:
        current = self._scorer.bundle.label
        log.warning("model update rejected: %s: %s; still running %s", what, reason, current)
        info = {"candidate": what, "reason": reason, "active": current, "at": now_iso()}
        self._check.last_rejection = info
        self.store.record("rejected", f"{what}: {reason}")
        self._emit("rejected", info)
        return f"rejected: {reason}"

    def rollback(self, reason: str) -> None:
        """Return to the previous model (else the shipped one) and block the current version."""
        with self._op_lock:
            current, current_path = self._scorer.bundle.label, self._path
            default = self.store.default
            candidates = [p for p in (self.store.previous_path(), default)
                          if p is not None and not _same(p, current_path)]
            for candidate in candidates:
                try:
                    scorer = load_checked(candidate, self.cfg.detection.threads)
                except BundleError as exc:
                    log.error("rollback candidate %s does not load: %s", candidate, exc)
                    continue
                if not _same(current_path, default):
                    self.store.block(current, reason)
                self._switch_back(scorer, candidate, current, reason)
                return
            message = f"model rollback impossible: {reason}; nothing loadable to return to, " \
                      f"still running {current}"
            log.error(message)
            self.store.record("rollback_failed", message)
            self._emit("rollback_failed", {"from": current, "reason": reason})

    def _switch_back(self, scorer: Scorer, path: Path, old: str, reason: str) -> None:
        default = self.store.default
        previous = None if _same(path, default) else default
        self.store.set_pointers(path, previous)
        with self._lock:
            self._scorer, self._path, self._trial = scorer, path, None
        with self.store.state() as st:
            st["trial"] = None
        self.store.prune()
        message = f"model rolled back: {old} → {scorer.bundle.label}: {reason}"
        log.warning(message)
        self.store.record("rolled_back", message)
        self._emit("rolled_back", {"from": old, "to": scorer.bundle.label, "reason": reason,
                                   "threshold": self.threshold()})

    def sync_pointer(self) -> None:
        """Follow the active pointer if someone else (``guaita model rollback``) moved it."""
        with self._op_lock:
            target = self.store.active_path()
            if _same(target, self._path):
                return
            old = self._scorer.bundle.label
            try:
                scorer = load_checked(target, self.cfg.detection.threads)
            except BundleError as exc:
                self._reject(str(target), f"the active pointer names a model that does not "
                                          f"load: {exc}")
                return
            trial = self.store.read_state()["trial"]
            with self._lock:
                self._scorer, self._path = scorer, target
                on_trial = bool(trial) and trial.get("label") == scorer.bundle.label
                self._trial = _Trial(scorer.bundle.label) if on_trial else None
        message = (f"model switched: {old} → {scorer.bundle.label} (active pointer changed in "
                   f"{self.store.root}); {self._threshold_note()}")
        log.info(message)
        self._emit("switched", {"from": old, "to": scorer.bundle.label,
                                "reason": "active pointer changed", "threshold": self.threshold()})

    def _load_at_start(self) -> tuple[Scorer, Path]:
        active = self.store.active_path()
        try:
            scorer = load_checked(active, self.cfg.detection.threads)
        except BundleError as exc:
            if _same(active, self.store.default):
                raise BundleError(f"the model {active} does not load: {exc}") from None
            return self._fallback_at_start(active, str(exc))
        label = scorer.bundle.label
        with self.store.state() as st:
            trial = st["trial"]
            if trial and trial.get("label") == label:
                trial["starts"] = int(trial.get("starts", 0)) + 1
                starts = trial["starts"]
            else:
                st["trial"], starts = None, 0
        if starts > self.cfg.updates.trial_max_starts:
            return self._fallback_at_start(
                active, f"the daemon restarted {starts} times while {label} was on trial",
                label=label)
        self._trial = _Trial(label) if starts else None
        log.info("model %s loaded from %s; %s", label, active, self._threshold_note_for(scorer))
        return scorer, active

    def _threshold_note_for(self, scorer: Scorer) -> str:
        pinned = self.cfg.detection.threshold
        if pinned is not None:
            return f"threshold {pinned:g} (pinned in detection.threshold)"
        return f"threshold {scorer.manifest.recommended_threshold:g} (recommended by the model)"

    def _fallback_at_start(self, failed: Path, reason: str,
                           label: str | None = None) -> tuple[Scorer, Path]:
        label = label or (self.store.describe(failed) or {}).get("label", str(failed))
        for candidate in (self.store.previous_path(), self.store.default):
            if candidate is None or _same(candidate, failed):
                continue
            try:
                scorer = load_checked(candidate, self.cfg.detection.threads)
            except BundleError as exc:
                log.error("fallback model %s does not load either: %s", candidate, exc)
                continue
            self.store.block(label, reason)
            previous = None if _same(candidate, self.store.default) else self.store.default
            self.store.set_pointers(candidate, previous)
            with self.store.state() as st:
                st["trial"] = None
            message = f"model rolled back: {label} → {scorer.bundle.label}: {reason}"
            log.warning(message)
            self.store.record("rolled_back", message)
            self._emit("rolled_back", {"from": label, "to": scorer.bundle.label,
                                       "reason": reason})
            return scorer, candidate
        raise BundleError(f"no usable model: {failed} failed ({reason}) and no fallback loads")

    # -- reporting
    def _emit(self, kind: str, info: dict[str, Any]) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(kind, info)
        except Exception:  # a reporting bug must not break updates
            log.exception("model on_change callback failed")

    def status(self) -> dict[str, Any]:
        u = self.cfg.updates
        scorer, path, trial = self._scorer, self._path, self._trial
        return {
            "active": _describe(scorer.bundle, path),
            "previous": self.store.describe(self.store.previous_path()),
            "threshold": self.threshold(scorer),
            "threshold_source": "pinned" if self.cfg.detection.threshold is not None
            else "model",
            "trial": None if trial is None else {"label": trial.label, "frames": trial.frames,
                                                 "detections": trial.detections},
            "updates": {"enabled": u.enabled, "channel": u.channel,
                        "last_check": self._check.last_check,
                        "last_result": self._check.last_result,
                        "last_rejection": self._check.last_rejection},
        }


def _same(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return a is b
    return os.path.realpath(a) == os.path.realpath(b)
