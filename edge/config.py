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
    """False-positive rules (edge/decide.py); docs/suppression.md explains each one."""

    enabled: bool = True
    persistence: bool = True  # satellites/aircraft that continue in the next/previous frame
    whole_frame_fraction: float = 0.25  # share of changed pixels above which a pair is a flash
    auto_mask: bool = True  # learn pixels that change in many frames (overlay, hot pixels)
    decision_timeout_s: float = 120.0  # give up waiting for the next frame after this
    # streak geometry (full-frame pixels, noise σ)
    analysis_width: int = 640  # the difference is area-downscaled to about this width
    streak_k_sigma: float = 3.0
    min_streak_px: float = 24.0  # shorter changes are stars, hot pixels, twinkling
    # persistence: a segment continuing the candidate's line in the previous/next frame
    link_angle_deg: float = 30.0  # bend where pieces meet (fisheye); a quarter across a gap
    link_offset_px: float = 12.0
    link_gap_frac: float = 3.0  # largest gap along the line, as a share of the longer segment
    # Pieces whose facing ends are closer than this share of the longer one (+ link_offset_px)
    # are one moving object (a satellite moves little in the dead time between exposures); a
    # wider gap along the same straight line is a meteor split by that dead time.
    satellite_gap_frac: float = 0.5
    duplicates: bool = True  # a meteor split over two frames: keep the stronger
    # ... unless the two pieces match in length and in peak brightness within this ratio: a
    # steady light exposed twice (short twilight exposures), not a meteor split. 0 = off.
    twin_ratio: float = 1.3
    # A trail seen in one frame only that is evenly lit and cut off sharply at both ends (a
    # satellite crossing for the whole exposure; a meteor brightens and fades) is "satellite":
    # its box-ness (edge/streaks.py: DiffAnalysis.steadiness) at least this, its plateau at
    # least steady_trail_snr times the noise. 0 = off.
    steady_trail_box: float = 0.78
    steady_trail_snr: float = 10.0
    # ... or a trail in one frame whose two end quarters both shine with at least even_ends_light
    # of its brightest light, within even_ends_imbalance of each other (a meteor's rising end is
    # dim): judged on trails of at least even_ends_min_px that peak under even_ends_max_peak
    # grey levels (a bright meteor's core can look even). 0 = off, the default: at 0.7 it
    # removed a few false alerts with 2.0.0 but not enough to lower the shipped threshold within
    # its budget, and with 3.6.0 none at the threshold, for 1-3 meteor frames (docs/suppression.md,
    # "Even ends").
    even_ends_light: float = 0.0
    even_ends_imbalance: float = 0.2
    even_ends_min_px: float = 40.0
    even_ends_max_peak: float = 120.0
    # A streak repeated beside itself in the frame before/after is no meteor: within this many
    # pixels a fixed feature (Moon limb, lit edge; "masked"), within recur_cloud_px on a cloudy
    # frame a drifting cloud edge ("cloud"). 0 = off.
    recur_offset_px: float = 6.0
    recur_cloud_px: float = 40.0
    # A candidate with some streaks explained (a satellite, an aircraft) and some not is scored
    # again with the explained ones masked (their line ± rescore_margin_px); if that score is
    # under rescore_below (and the threshold), the frame takes the explained reason. One extra
    # inference, on such frames only.
    rescore_mixed: bool = True
    rescore_margin_px: float = 8.0
    rescore_below: float = 0.5
    # The trail classifier's top line (what the score rests on, often too faint for the streak
    # finder) continuing a streak of the frame before or after is a moving object's: the frame
    # takes a second look with that line masked, as above (a frame with no streak of its own
    # and no second look at hand is a satellite outright). Needs persistence.
    trail_line_links: bool = True
    # aircraft: rows of evenly spaced strobe dots
    aircraft_min_dots: int = 5
    aircraft_single_frame: bool = True  # a dotted row alone is an aircraft too
    # whole-frame changes
    flash_k_sigma: float = 3.0
    flash_keep_streak_px: float = 100.0  # a sharp streak this long in a flash frame is kept
    # (a fireball lights the sky); 0 = off
    # A whole-frame change that one brightness curve explains everywhere (auto-exposure or
    # gain stepping in twilight) is compensated, not thrown away (edge/exposure.py): residual
    # allowed, grey levels (90th percentile of 64-px block medians).
    exposure_steps: bool = True
    exposure_step_max_residual: float = 2.0
    # masks
    auto_mask_share: float = 0.25  # pixels changing in this share of frames are masked
    auto_mask_warmup: int = 60  # frames before the learned mask applies
    masked_fraction: float = 0.9  # a streak this much inside masked pixels is "masked"
    # clouds
    cloud: bool = True
    # Star pixels per 10,000 below which a frame is cloudy: a streakless candidate there is
    # cloud if clouds are also seen moving (few stars alone is twilight too).
    cloudy_star_density: float = 8.0
    # A streak whose light across it is wider than this (full width at half maximum, px) is
    # the soft moving edge of a cloud when the frame shows clouds moving (diffuse change over
    # at least cloud_diffuse_share of it, or three soft streaks). Meteors and satellites are
    # 2-4 px.
    cloud_min_fwhm_px: float = 6.0
    cloud_diffuse_share: float = 0.002
    # A streak peaking at least this bright in the difference is never a cloud's edge (a
    # moving cloud's edge is dim there; a bright meteor can measure wider than
    # cloud_min_fwhm_px, the sensor's blooming); 0 = no such exception.
    cloud_max_peak: float = 160.0


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
    # AWS IoT credentials provider (X.509 → temporary credentials): the account's
    # credentials endpoint host and the role alias; uses the mqtt.tls client cert and key.
    credentials_provider: str = ""
    role_alias: str = ""
    max_bundle_mb: float = 200.0  # larger channel entries are refused before downloading
    smoke_max_s: float = 10.0  # a new model scoring one frame slower than this is refused
    # Rate guard: a new model detecting in more than guard_max_rate of its frames (after at
    # least guard_min_frames) is rolled back; it is trusted after guard_window_frames frames.
    guard_min_frames: int = 200
    guard_max_rate: float = 0.2
    guard_window_frames: int = 1500
    trial_max_starts: int = 3  # daemon restarts tolerated while a new model is on trial


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
            bad(f"detection.mask_rects[{i}]", "must be [x, y, width, height], width and height > 0")
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
    if s.decision_timeout_s <= 0:
        bad("suppression.decision_timeout_s", "must be positive")
    if not 64 <= s.analysis_width <= 4096:
        bad("suppression.analysis_width", f"must be 64..4096, got {s.analysis_width}")
    for key in ("streak_k_sigma", "min_streak_px", "link_offset_px", "flash_k_sigma"):
        if getattr(s, key) <= 0:
            bad(f"suppression.{key}", "must be positive")
    if not 0 < s.link_angle_deg <= 45:
        bad("suppression.link_angle_deg", "must be in (0, 45]")
    for key in ("link_gap_frac", "satellite_gap_frac"):
        if not 0 < getattr(s, key) <= 10:
            bad(f"suppression.{key}", "must be in (0, 10]")
    if s.satellite_gap_frac > s.link_gap_frac:
        bad("suppression.satellite_gap_frac", "must not exceed link_gap_frac")
    if s.aircraft_min_dots < 3:
        bad("suppression.aircraft_min_dots", "must be >= 3")
    if s.recur_offset_px < 0 or s.recur_cloud_px < 0:
        bad("suppression.recur_offset_px", "recur_offset_px and recur_cloud_px must be >= 0")
    if s.twin_ratio != 0 and s.twin_ratio < 1:
        bad("suppression.twin_ratio", "must be >= 1 (0 = off)")
    if s.rescore_margin_px < 0:
        bad("suppression.rescore_margin_px", "must be >= 0 (px)")
    if not 0 <= s.rescore_below <= 1:
        bad("suppression.rescore_below", "must be in [0, 1]")
    if s.flash_keep_streak_px < 0:
        bad("suppression.flash_keep_streak_px", "must be >= 0 (0 = off)")
    if not 0 <= s.steady_trail_box <= 1:
        bad("suppression.steady_trail_box", "must be in [0, 1] (0 = off)")
    if s.steady_trail_snr < 0:
        bad("suppression.steady_trail_snr", "must be >= 0")
    if not 0 <= s.even_ends_light <= 1:
        bad("suppression.even_ends_light", "must be in [0, 1] (0 = off)")
    if not 0 <= s.even_ends_imbalance <= 1:
        bad("suppression.even_ends_imbalance", "must be in [0, 1]")
    if s.even_ends_min_px < 0:
        bad("suppression.even_ends_min_px", "must be >= 0 (px)")
    if s.even_ends_max_peak <= 0:
        bad("suppression.even_ends_max_peak", "must be > 0 (grey levels)")
    if not s.exposure_step_max_residual > 0:
        bad("suppression.exposure_step_max_residual", "must be > 0 (grey levels)")
    for key in ("auto_mask_share", "masked_fraction"):
        if not 0 < getattr(s, key) <= 1:
            bad(f"suppression.{key}", "must be in (0, 1]")
    if s.auto_mask_warmup < 1:
        bad("suppression.auto_mask_warmup", "must be >= 1")
    if s.cloudy_star_density < 0:
        bad("suppression.cloudy_star_density", "must be >= 0")
    if s.cloud_min_fwhm_px <= 0:
        bad("suppression.cloud_min_fwhm_px", "must be positive")
    if not 0 < s.cloud_diffuse_share <= 1:
        bad("suppression.cloud_diffuse_share", "must be in (0, 1]")
    if s.cloud_max_peak < 0:
        bad("suppression.cloud_max_peak", "must be >= 0 (grey levels; 0 = off)")
    u = cfg.updates
    if u.enabled and not u.bucket:
        bad("updates.bucket", "required when updates.enabled = true")
    if u.interval_min <= 0:
        bad("updates.interval_min", "must be positive")
    if not u.prefix.strip("/") or not u.channel or "/" in u.channel:
        bad("updates.channel" if u.prefix.strip("/") else "updates.prefix",
            "must be non-empty (and the channel a single path segment)")
    if u.enabled and not Path(u.public_key).expanduser().is_file():
        bad("updates.public_key", f"file not found: {u.public_key}")
    if bool(u.credentials_provider) != bool(u.role_alias):
        bad("updates.role_alias" if u.credentials_provider else "updates.credentials_provider",
            "credentials_provider and role_alias go together")
    if u.credentials_provider and not (cfg.mqtt.tls.cert and cfg.mqtt.tls.key):
        bad("updates.credentials_provider", "needs mqtt.tls.cert and mqtt.tls.key (the device "
            "certificate)")
    if u.max_bundle_mb <= 0:
        bad("updates.max_bundle_mb", "must be positive")
    if u.smoke_max_s <= 0:
        bad("updates.smoke_max_s", "must be positive")
    if not 0 < u.guard_max_rate <= 1:
        bad("updates.guard_max_rate", "must be in (0, 1]")
    if u.guard_min_frames < 1:
        bad("updates.guard_min_frames", "must be >= 1")
    if u.guard_window_frames < u.guard_min_frames:
        bad("updates.guard_window_frames", "must be >= updates.guard_min_frames")
    if u.trial_max_starts < 1:
        bad("updates.trial_max_starts", "must be >= 1")


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
