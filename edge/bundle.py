"""Model bundle: a directory (or .tar.gz) holding ``model.onnx`` + ``manifest.json``, and the
trail classifier's ``trail.onnx`` when its stage is one.

The manifest is the single source of truth for how to feed the model: the preprocessing variant,
the input shape, which output column is "meteor", the optional trail stage that re-scores
frames (a logistic profile stage, or the trail classifier with its own graph and sha256), and
the recommended threshold (for the score after the stage). Training writes
it (training/export.py); the edge reads it here. No onnxruntime import: validating a bundle must
be cheap and possible anywhere.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.preprocess import PreprocessError, PreprocessSpec
from edge.trail_classifier import KIND as CLASSIFIER_KIND
from edge.trail_classifier import TrailClassifier, TrailClassifierError
from edge.trail_stage import TrailStage, TrailStageError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
METEOR_CLASS = "meteor"


class BundleError(ValueError):
    """A missing, corrupt or inconsistent model bundle."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    sha256: str
    preprocessing: PreprocessSpec
    input_shape: tuple[int, int, int, int]
    classes: tuple[str, ...]
    recommended_threshold: float
    created_at: str
    format_version: int = FORMAT_VERSION
    input_name: str = "image"
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    min_guaita_version: str = "0.1.0"
    # Re-scores the network's candidates (edge/trail_stage.py) or every frame by its candidate
    # lines (edge/trail_classifier.py).
    trail_stage: TrailStage | TrailClassifier | None = None

    @property
    def extra_files(self) -> tuple[tuple[str, str], ...]:
        """(file name, sha256) of the bundle's files besides model.onnx and the manifest."""
        if isinstance(self.trail_stage, TrailClassifier):
            return ((self.trail_stage.model_file, self.trail_stage.sha256),)
        return ()

    @property
    def meteor_index(self) -> int:
        return self.classes.index(METEOR_CLASS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "model_file": MODEL_NAME,
            "sha256": self.sha256,
            "preprocessing": self.preprocessing.to_dict(),
            "input": {"name": self.input_name, "shape": list(self.input_shape),
                      "dtype": "float32", "range": [0, 255]},
            "classes": list(self.classes),
            "recommended_threshold": self.recommended_threshold,
            "metrics": self.metrics,
            "training": self.training,
            "min_guaita_version": self.min_guaita_version,
        } | ({"trail_stage": self.trail_stage.to_dict()} if self.trail_stage else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise BundleError(f"manifest: missing key {key!r}")
            if not isinstance(data[key], kind):
                raise BundleError(f"manifest: {key!r} has the wrong type")
            return data[key]

        version = need("format_version", int)
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest: format_version {version} not supported (this guaita reads "
                f"{FORMAT_VERSION})"
            )
        try:
            spec = PreprocessSpec.from_dict(need("preprocessing", dict))
        except (PreprocessError, TypeError) as exc:
            raise BundleError(f"manifest: preprocessing: {exc}") from None
        inp = need("input", dict)
        shape = tuple(inp.get("shape", ()))
        if len(shape) != 4 or shape[1:] != (spec.channels, spec.size, spec.size):
            raise BundleError(
                f"manifest: input shape {list(shape)} does not match preprocessing "
                f"{spec.id} ({spec.channels}×{spec.size}×{spec.size})"
            )
        classes = tuple(need("classes", list))
        if METEOR_CLASS not in classes:
            raise BundleError(f"manifest: classes {list(classes)} lack {METEOR_CLASS!r}")
        threshold = need("recommended_threshold", (int, float))
        if not 0.0 < threshold < 1.0:
            raise BundleError(f"manifest: recommended_threshold {threshold} not in (0, 1)")
        stage = None
        raw_stage = data.get("trail_stage")
        if raw_stage is not None:
            try:
                if isinstance(raw_stage, dict) and raw_stage.get("kind") == CLASSIFIER_KIND:
                    stage = TrailClassifier.from_dict(raw_stage)
                else:
                    stage = TrailStage.from_dict(raw_stage)
            except (TrailStageError, TrailClassifierError) as exc:
                raise BundleError(f"manifest: {exc}") from None
        sha = need("sha256", str)
        if len(sha) != 64:
            raise BundleError("manifest: sha256 must be 64 hex digits")
        return cls(
            name=need("name", str),
            version=need("version", str),
            sha256=sha,
            preprocessing=spec,
            input_shape=shape,  # type: ignore[arg-type]
            classes=classes,
            recommended_threshold=float(threshold),
            created_at=need("created_at", str),
            input_name=str(inp.get("name", "image")),
            metrics=dict(data.get("metrics", {})),
            training=dict(data.get("training", {})),
            min_guaita_version=str(data.get("min_guaita_version", "0.1.0")),
            trail_stage=stage,
        )


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_NAME

    @property
    def label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open and validate a bundle directory or .tar.gz; raise BundleError naming the problem."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"model bundle not found: {root}")
    if root.is_file():
        root = _extract(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME} (is this a guaita model bundle?)")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path}: must hold a JSON object")
    manifest = Manifest.from_dict(data)
    model = root / MODEL_NAME
    if not model.is_file():
        raise BundleError(f"{root}: no {MODEL_NAME}")
    files = [(MODEL_NAME, manifest.sha256), *manifest.extra_files]
    for name, _ in files[1:]:
        if not (root / name).is_file():
            raise BundleError(f"{root}: no {name} (the manifest's trail stage needs it)")
    if verify:
        for name, want in files:
            actual = sha256_file(root / name)
            if actual != want:
                raise BundleError(f"{root / name}: sha256 {actual[:12]}… does not match "
                                  f"manifest {want[:12]}…")
    return Bundle(root=root, manifest=manifest)


def write_bundle(
    directory: str | Path, onnx_bytes: bytes, manifest_fields: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> Bundle:
    """Write model.onnx + manifest.json (sha256 and created_at filled in), and `extra_files`
    (the files the manifest's trail stage names, e.g. trail.onnx), and validate it. A file of
    an earlier bundle in the folder that this one does not name is removed."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    extra_files = extra_files or {}
    for stale in root.glob("*.onnx"):
        if stale.name != MODEL_NAME and stale.name not in extra_files:
            stale.unlink()
    for name, data in extra_files.items():
        (root / name).write_bytes(data)
    (root / MODEL_NAME).write_bytes(onnx_bytes)
    data = dict(manifest_fields)
    data.setdefault("format_version", FORMAT_VERSION)
    data.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    data["model_file"] = MODEL_NAME
    data["sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    Manifest.from_dict(data)  # refuse to write what the edge would refuse to read
    (root / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return load_bundle(root)


def bundle_files(bundle: Bundle) -> dict[str, bytes]:
    """The graphs a bundle holds besides its manifest, by file name (model.onnx first)."""
    names = [MODEL_NAME, *(name for name, _ in bundle.manifest.extra_files)]
    return {name: (bundle.root / name).read_bytes() for name in names}


def _extract(archive: Path) -> Path:
    if not tarfile.is_tarfile(archive):
        raise BundleError(f"{archive}: not a bundle directory or tar archive")
    target = Path(tempfile.mkdtemp(prefix="guaita-bundle-"))
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")  # "data" refuses absolute paths and ../
    entries = [p for p in target.iterdir()]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target
