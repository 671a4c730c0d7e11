"""``guaita model``: keygen and publish (maintainer), list | current | rollback (station admin).

publish  bundle → ``<prefix>/<name>/<version>/bundle.tar.gz`` + signed ``<prefix>/<channel>/
         latest.json`` (+ ``.sig``). Versions are immutable: republishing one is refused.
list, current, rollback  operate on the station's state dir (``paths.state``/models); the running
         daemon follows a moved pointer within seconds (or at once on SIGHUP).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.bundle import MANIFEST_NAME, Bundle, BundleError, bundle_files, load_bundle
from edge.config import Config, ConfigError, load_config
from edge.signing import (
    SigningError,
    generate_keypair,
    key_id,
    load_private_key,
    sign,
)
from edge.updates import (
    NAME_RE,
    ChannelEntry,
    ModelStore,
    UpdateRejected,
    channel_keys,
    compare_versions,
    load_checked,
    now_iso,
    tarball_key,
)


class PublishError(ValueError):
    """The release cannot be published as asked."""


# ---------------------------------------------------------------- publish


def bundle_tarball(bundle: Bundle, overrides: dict[str, Any] | None = None) -> bytes:
    """The bundle as .tar.gz bytes (manifest.json, model.onnx and any trail.onnx at the archive
    root), with manifest fields overridden. Reproducible: the same bundle gives the same bytes, so
    promoting a release to another channel finds its tarball already uploaded."""
    manifest = json.loads((bundle.root / MANIFEST_NAME).read_text())
    manifest.update(overrides or {})
    files = {MANIFEST_NAME: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
             **bundle_files(bundle)}
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _client(endpoint_url: str | None, region: str | None, profile: str | None) -> Any:
    import boto3

    session = boto3.Session(profile_name=profile or None, region_name=region or None)
    return session.client("s3", endpoint_url=endpoint_url or None)


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def publish(
    bundle_path: str | Path,
    *,
    bucket: str,
    private_key: str | Path,
    prefix: str = "models",
    channel: str = "stable",
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    release_notes: str = "",
    min_guaita_version: str | None = None,
    as_version: str | None = None,
    check: bool = True,
    force: bool = False,
    client: Any = None,
) -> ChannelEntry:
    """Upload a bundle and point the channel at it; returns the signed entry.

    as_version republishes a bundle under a new version (how a channel goes back to an older
    model: stations never install a version <= the one they run). check=False skips validation
    and the smoke test (tests use it to publish deliberately broken bundles).
    """
    key = load_private_key(private_key)
    if check:
        bundle = load_bundle(bundle_path)
        load_checked(bundle.root, threads=1)
    else:
        bundle = load_bundle(bundle_path, verify=False)
    overrides = {k: v for k, v in (("version", as_version),
                                   ("min_guaita_version", min_guaita_version)) if v}
    if as_version and not NAME_RE.match(as_version):
        raise PublishError(f"--as-version {as_version!r}: letters, digits, . _ + - only")
    m = replace(bundle.manifest, **overrides)
    tarball = bundle_tarball(bundle, overrides)
    digest = hashlib.sha256(tarball).hexdigest()
    client = client or _client(endpoint_url, region, profile)
    entry_key, sig_key = channel_keys(prefix, channel)
    data_key = tarball_key(prefix, m.name, m.version)
    existing = _head(client, bucket, data_key)
    same = existing is not None and existing.get("Metadata", {}).get("sha256") == digest
    if not force:
        if existing is not None and not same:
            raise PublishError(f"s3://{bucket}/{data_key} exists with other content: versions "
                               "are immutable, bump the bundle version (or --force)")
        if _head(client, bucket, entry_key) is not None:
            body = client.get_object(Bucket=bucket, Key=entry_key)["Body"].read()
            try:
                current = ChannelEntry.parse(body)
            except UpdateRejected:
                current = None
            if current and compare_versions(m.version, current.version) <= 0:
                raise PublishError(
                    f"channel {channel} is at {current.label}; stations skip versions <= the one "
                    "they run, so publish a higher version (--as-version) or --force")
    entry = ChannelEntry(
        channel=channel, name=m.name, version=m.version, key=data_key, sha256=digest,
        size=len(tarball), model_sha256=m.sha256, recommended_threshold=m.recommended_threshold,
        min_guaita_version=m.min_guaita_version, release_notes=release_notes,
        published_at=now_iso(), key_id=key_id(key.public_key()),
    )
    raw = entry.to_bytes()
    # Tarball first, then the manifest: a station never sees an entry whose tarball is missing.
    if not same:
        client.put_object(Bucket=bucket, Key=data_key, Body=tarball,
                          ContentType="application/gzip", Metadata={"sha256": digest})
    client.put_object(Bucket=bucket, Key=entry_key, Body=raw, ContentType="application/json",
                      CacheControl="no-cache")
    client.put_object(Bucket=bucket, Key=sig_key, Body=sign(raw, key),
                      ContentType="application/octet-stream", CacheControl="no-cache")
    return entry


# ---------------------------------------------------------------- station side


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _store(cfg: Config) -> ModelStore:
    return ModelStore(cfg.paths.state_dir / "models", cfg.paths.model_path)


def list_models(cfg: Config) -> list[dict[str, Any]]:
    store = _store(cfg)
    state = store.read_state()
    active, previous = store.active_path(), store.previous_path()
    paths = [*store.installed()]
    if store.default not in paths:
        paths.append(store.default)
    rows = []
    for path in paths:
        info = store.describe(path) if path.exists() else {"label": "?", "path": str(path),
                                                           "error": "missing"}
        assert info is not None
        roles = []
        if _same(path, active):
            roles.append("active")
        if previous is not None and _same(path, previous):
            roles.append("previous")
        if _same(path, store.default):
            roles.append("shipped")
        if info.get("label") in state["blocked"]:
            roles.append("blocked")
        rows.append({**info, "roles": roles})
    return rows


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def current(cfg: Config) -> dict[str, Any]:
    store = _store(cfg)
    state = store.read_state()
    info = store.describe(store.active_path()) or {}
    pinned = cfg.detection.threshold
    return {
        "active": info,
        "previous": store.describe(store.previous_path()),
        "threshold": pinned if pinned is not None else info.get("recommended_threshold"),
        "threshold_source": "pinned (detection.threshold)" if pinned is not None
        else "recommended by the model",
        "trial": state["trial"],
        "blocked": state["blocked"],
        "history": state["history"][-10:],
        "updates": {"enabled": cfg.updates.enabled, "bucket": cfg.updates.bucket,
                    "channel": f"{cfg.updates.prefix.strip('/')}/{cfg.updates.channel}"},
    }


def rollback(cfg: Config, reason: str) -> tuple[str, str]:
    """Point `active` at the previous model (checked to load first); block the one left."""
    store = _store(cfg)
    active, previous = store.active_path(), store.previous_path()
    if previous is None or _same(previous, active):
        raise PublishError("nothing to roll back to: no previous model in "
                           f"{store.root} (running {active})")
    try:
        load_checked(previous, cfg.detection.threads)
    except BundleError as exc:
        raise PublishError(f"the previous model {previous} does not load: {exc}") from None
    old = (store.describe(active) or {}).get("label", str(active))
    new = (store.describe(previous) or {}).get("label", str(previous))
    if not _same(active, store.default):
        store.block(old, reason)
    store.set_pointers(previous, None if _same(previous, store.default) else store.default)
    with store.state() as st:
        st["trial"] = None
    store.record("rolled_back", f"model rolled back: {old} → {new}: {reason}")
    return old, new


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair (maintainer)")
    p.add_argument("outdir", help="directory for model-signing.key and model-signing.pub")
    p.add_argument("--force", action="store_true", help="overwrite an existing key pair")

    p = sub.add_parser("publish", help="upload a bundle and sign the channel manifest")
    p.add_argument("bundle", help="bundle directory or .tar.gz")
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="models")
    p.add_argument("--channel", default="stable")
    p.add_argument("--key", required=True, help="Ed25519 private key PEM (from keygen)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, tests)")
    p.add_argument("--region")
    p.add_argument("--profile", help="AWS profile for the upload")
    p.add_argument("--release-notes", default="")
    p.add_argument("--min-guaita-version", help="default: the bundle manifest's")
    p.add_argument("--as-version", help="publish the bundle under this version instead (to put "
                                        "an older model back: stations only move up)")
    p.add_argument("--no-smoke-test", action="store_true",
                   help="skip loading the model in onnxruntime before publishing")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing version / publish a lower version")

    for name, text in (("list", "installed models on this station"),
                       ("current", "the active model, threshold, trial and recent history"),
                       ("rollback", "return to the previous model and block this one")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="config file (default: $GUAITA_CONFIG or "
                                        "/etc/guaita.toml)")
        if name != "rollback":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            p.add_argument("--reason", default="rolled back by the admin")


def run(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.action](args)
    except (ConfigError, SigningError, PublishError, BundleError) as exc:
        print(f"guaita model {args.action}: {exc}", file=sys.stderr)
        return 1


def _keygen(args: argparse.Namespace) -> int:
    private, public = generate_keypair(args.outdir, force=args.force)
    print(f"private key: {private}  (keep it offline; never ship it)")
    print(f"public key:  {public}  (ship it; stations set updates.public_key to it)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    entry = publish(
        args.bundle, bucket=args.bucket, private_key=args.key, prefix=args.prefix,
        channel=args.channel, endpoint_url=args.endpoint_url, region=args.region,
        profile=args.profile, release_notes=args.release_notes,
        min_guaita_version=args.min_guaita_version, as_version=args.as_version,
        check=not args.no_smoke_test,
        force=args.force,
    )
    entry_key, _ = channel_keys(args.prefix, args.channel)
    print(f"published {entry.label} to channel {args.channel}")
    print(f"  s3://{args.bucket}/{entry.key}  {entry.size} bytes  sha256 {entry.sha256}")
    print(f"  s3://{args.bucket}/{entry_key} (+ .sig, key {entry.key_id})")
    print(f"  recommended threshold {entry.recommended_threshold:g}, needs guaita >= "
          f"{entry.min_guaita_version}")
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = list_models(load_config(args.config))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [[r.get("label", "?"), ",".join(r["roles"]) or "-",
              f"{r['recommended_threshold']:g}" if "recommended_threshold" in r else "-",
              r.get("sha256", "")[:12] or "-", _day(r.get("created_at", "")),
              r.get("error") or r["path"]] for r in rows]
    print(_table(table, ["MODEL", "ROLE", "THRESHOLD", "SHA256", "CREATED", "PATH"]))
    return 0


def _day(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d")
    except ValueError:
        return stamp or "-"


def _current(args: argparse.Namespace) -> int:
    info = current(load_config(args.config))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    active, previous = info["active"], info["previous"]
    rows = [
        ["active", f"{active.get('label', '?')}  ({active.get('path', '?')})"],
        ["sha256", active.get("sha256", "-")],
        ["threshold", f"{info['threshold']} — {info['threshold_source']}"],
        ["previous", previous["label"] if previous else "-"],
        ["trial", (f"{info['trial']['label']} since {info['trial']['since']}, "
                   f"{info['trial'].get('starts', 0)} restarts") if info["trial"] else "-"],
        ["updates", (f"s3://{info['updates']['bucket']}/{info['updates']['channel']}"
                     if info["updates"]["enabled"] else "disabled")],
    ]
    rows += [["blocked", f"{label}: {b.get('reason', '')}"] for label, b in info["blocked"].items()]
    print(_table(rows, ["FIELD", "VALUE"]))
    if info["history"]:
        print("\nrecent events:")
        print(_table([[h["at"], h["kind"], h["message"]] for h in info["history"]],
                     ["WHEN", "EVENT", "DETAIL"]))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    old, new = rollback(load_config(args.config), args.reason)
    print(f"rolled back: {old} → {new} ({old} is blocked from reinstalling)")
    print("the running daemon follows within ~10 s (or now: systemctl reload guaita)")
    return 0


_ACTIONS = {"keygen": _keygen, "publish": _publish, "list": _list, "current": _current,
            "rollback": _rollback}
