"""``/etc/guaita.toml`` → typed, validated settings.

Every section is a frozen dataclass; the loader walks the TOML against the dataclass fields, so an
error always names the key (``mqtt.port: expected an integer, got 'x'``) and an unknown key is an
error too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_PATH = Path("/etc/guaita.toml")
DEFAULT_CONFIG_RESOURCE = Path(__file__).with_name("default_config.toml")
OBSERVATORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class PathsConfig:
    images: str = "~/allsky/images"
    state: str = "/var/lib/guaita"
    model: str = "/usr/share/guaita/models/default"

    @property
    def images_dir(self) -> Path:
        return Path(self.images).expanduser()

    @property
    def state_dir(self) -> Path:
        return Path(self.state).expanduser()

    @property
    def model_path(self) -> Path:
        return Path(self.model).expanduser()


@dataclass(frozen=True)
class DetectionConfig:
    # None: use the model bundle's recommended threshold (a new model with a different score
    # scale then brings its own); a number pins it.
    threshold: float | None = None
    threads: int = 1  # onnxruntime intra-op threads; the Pi 4 has 4 cores, AllSky needs one
    max_gap_s: float = 180.0  # a previous frame older than this is not a valid reference
    mask: str = ""  # optional mask image: black = ignore
    mask_rects: list[list[int]] = field(default_factory=list)  # [[x, y, w, h], ...] to ignore
    scan_extensions: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png"])


@dataclass(frozen=True)
class NightConfig:
    # "always", "times" (start/end local clock) or "sun" (sun below sun_altitude_deg).
    mode: Literal["always", "times", "sun"] = "always"
    start: str = "20:00"
    end: str = "08:00"
    latitude: float = 41.9
    longitude: float = 1.6
    sun_altitude_deg: float = -6.0


@dataclass(frozen=True)
class TLSConfig:
    ca: str = ""
    cert: str = ""
    key: str = ""
    alpn: str = ""  # "x-amzn-mqtt-ca" for AWS IoT Core on port 443
    insecure_skip_verify: bool = False  # only for lab brokers with self-signed names


@dataclass(frozen=True)
class MQTTConfig:
    enabled: bool = False
    host: str = "localhost"
    port: int = 8883
    client_id: str = ""  # AWS IoT: the thing name; default = observatory id
    topic_prefix: str = "guaita"
    keepalive_s: int = 60
    tls: TLSConfig = field(default_factory=TLSConfig)
    username: str = ""
    password: str = ""
    status_interval_s: float = 60.0
    home_assistant_discovery: bool = False
    home_assistant_prefix: str = "homeassistant"


@dataclass(frozen=True)
class OutboxConfig:
    max_events: int = 50_000  # when full, new events are refused with a log line
    file_sink: str = ""  # JSONL file every event is appended to (demo, no broker)


@dataclass(frozen=True)
class SuppressionConfig:
    enabled: bool = True
    persistence: bool = True  # satellites/aircraft that continue in the next/previous frame
    whole_frame_fraction: float = 0.25  # share of changed pixels above which a pair is a flash
    auto_mask: bool = True  # learn pixels that change in many frames (overlay, hot pixels)
    decision_timeout_s: float = 120.0  # give up waiting for the next frame after this


@dataclass(frozen=True)
class UpdatesConfig:
    enabled: bool = False
    bucket: str = ""
    prefix: str = "models"
    channel: str = "stable"
    interval_min: float = 60.0
    public_key: str = "/etc/guaita/model-signing.pub"
    aws_profile: str = ""
    endpoint_url: str = ""  # S3-compatible endpoint (tests, MinIO)
    region: str = "eu-west-1"
    credentials_provider: str = ""  # AWS IoT credentials provider endpoint
    role_alias: str = ""
    max_bundle_mb: float = 200.0


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class Config:
    observatory: str = "my-observatory"
    timezone: str = "UTC"  # the camera's clock: AllSky file names are local time
    paths: PathsConfig = field(default_factory=PathsConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    night: NightConfig = field(default_factory=NightConfig)
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = ""  # where it was loaded from (not a TOML key)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or self.observatory


# ---------------------------------------------------------------- loading


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        kind, str(kind)
    )


def _coerce(key: str, kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, options[0], value)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table [{key}], got {value!r}")
        return _build(kind, value, key + ".")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(kind)}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(prefix + f.name, hints[f.name], data[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:  # pragma: no cover
            raise ConfigError(f"{prefix}{f.name}: required")
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    def bad(key: str, why: str) -> typing.NoReturn:
        raise ConfigError(f"{key}: {why}")

    if not OBSERVATORY_RE.match(cfg.observatory):
        bad("observatory", "letters, digits, '-' and '_' only, 1-64 characters")
    try:
        ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        bad("timezone", f"unknown time zone {cfg.timezone!r} (e.g. 'Europe/Madrid')")
    d = cfg.detection
    if d.threshold is not None and not 0.0 < d.threshold < 1.0:
        bad("detection.threshold", f"must be between 0 and 1, got {d.threshold}")
    if not 1 <= d.threads <= 64:
        bad("detection.threads", f"must be 1..64, got {d.threads}")
    if d.max_gap_s <= 0:
        bad("detection.max_gap_s", "must be positive")
    for i, rect in enumerate(d.mask_rects):
        if len(rect) != 4 or rect[2] <= 0 or rect[3] <= 0:
            bad(f"detection.mask_rects[{i}]", "must be [x, y, width, height] with width, height > 0")
    if d.mask and not Path(d.mask).expanduser().is_file():
        bad("detection.mask", f"file not found: {d.mask}")
    n = cfg.night
    for key in ("start", "end"):
        if not TIME_RE.match(getattr(n, key)):
            bad(f"night.{key}", f"expected HH:MM (24 h), got {getattr(n, key)!r}")
    if not -90 <= n.latitude <= 90:
        bad("night.latitude", "must be -90..90")
    if not -180 <= n.longitude <= 180:
        bad("night.longitude", "must be -180..180")
    if not -18 <= n.sun_altitude_deg <= 0:
        bad("night.sun_altitude_deg", "must be between -18 and 0")
    m = cfg.mqtt
    if not 1 <= m.port <= 65535:
        bad("mqtt.port", f"must be 1..65535, got {m.port}")
    if m.enabled and not m.host:
        bad("mqtt.host", "required when mqtt.enabled = true")
    if "#" in m.topic_prefix or "+" in m.topic_prefix or m.topic_prefix.startswith("$"):
        bad("mqtt.topic_prefix", "must not contain wildcards or start with '$'")
    if m.tls.cert and not m.tls.key:
        bad("mqtt.tls.key", "required when mqtt.tls.cert is set")
    if m.enabled:
        for key in ("ca", "cert", "key"):
            value = getattr(m.tls, key)
            if value and not Path(value).expanduser().is_file():
                bad(f"mqtt.tls.{key}", f"file not found: {value}")
    if m.status_interval_s < 1:
        bad("mqtt.status_interval_s", "must be >= 1")
    if cfg.outbox.max_events < 1:
        bad("outbox.max_events", "must be >= 1")
    s = cfg.suppression
    if not 0 < s.whole_frame_fraction <= 1:
        bad("suppression.whole_frame_fraction", "must be in (0, 1]")
    u = cfg.updates
    if u.enabled and not u.bucket:
        bad("updates.bucket", "required when updates.enabled = true")
    if u.interval_min <= 0:
        bad("updates.interval_min", "must be positive")


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    cfg = _build(Config, data)
    _validate(cfg)
    return replace(cfg, source=source)


def load_config(path: str | Path | None = None) -> Config:
    """Load from `path`, $GUAITA_CONFIG, or /etc/guaita.toml; built-in defaults if none exist."""
    chosen = path or os.environ.get("GUAITA_CONFIG")
    if chosen is None:
        if not DEFAULT_PATH.exists():
            return parse_config("", source="<built-in defaults>")
        chosen = DEFAULT_PATH
    p = Path(chosen)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_config(text, source=str(p))
