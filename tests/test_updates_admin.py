"""`guaita model keygen|publish|list|current|rollback`, signatures, versions, config keys."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest
from tinymodel import make_tiny_bundle

from edge.cli import main
from edge.config import ConfigError, parse_config
from edge.model_admin import PublishError, publish
from edge.signing import (
    PASSPHRASE_ENV,
    SigningError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign,
    verify,
)
from edge.updates import ChannelEntry, ModelManager, UpdateRejected, compare_versions


@pytest.fixture
def s3(s3_endpoint: str):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1")


@pytest.fixture
def bucket(s3) -> str:
    name = f"guaita-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return name


# ---------------------------------------------------------------- signing


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path, capsys) -> None:
    assert main(["model", "keygen", str(tmp_path / "k")]) == 0
    private, public = tmp_path / "k" / "model-signing.key", tmp_path / "k" / "model-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    assert "keep it offline" in capsys.readouterr().out
    assert main(["model", "keygen", str(tmp_path / "k")]) == 1  # never overwrite a key
    assert "already exists" in capsys.readouterr().err


def test_signatures_verify_only_for_the_exact_bytes_and_key(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "a")
    _, other_public = generate_keypair(tmp_path / "b")
    data = b'{"version": "2"}'
    signature = sign(data, load_private_key(private))
    verify(data, signature, load_public_key(public))
    with pytest.raises(SigningError, match="bad signature"):
        verify(data + b" ", signature, load_public_key(public))
    with pytest.raises(SigningError, match="bad signature"):
        verify(data, signature, load_public_key(other_public))
    with pytest.raises(SigningError, match="64"):
        verify(data, signature[:-1], load_public_key(public))
    with pytest.raises(SigningError, match="not a PEM public key"):
        load_public_key(private)


def test_passphrase_protected_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    private, public = generate_keypair(tmp_path)
    assert b"ENCRYPTED" in private.read_bytes()
    verify(b"x", sign(b"x", load_private_key(private)), load_public_key(public))
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(SigningError, match=PASSPHRASE_ENV):
        load_private_key(private)


# ---------------------------------------------------------------- versions and entries


@pytest.mark.parametrize(("older", "newer"), [
    ("1", "2"), ("1.9", "1.10"), ("1.0", "1.0.1"), ("1.0rc1", "1.0"), ("2024.06.01", "2025.01.01"),
    ("0.1.0", "0.2"),
])
def test_version_order(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert compare_versions(newer, newer) == 0


def test_channel_entry_refuses_unsafe_names() -> None:
    good = ChannelEntry(channel="stable", name="tiny", version="2", key="models/tiny/2/b",
                        sha256="a" * 64, size=10, model_sha256="b" * 64,
                        recommended_threshold=0.5)
    assert ChannelEntry.parse(good.to_bytes()) == good
    bad = json.loads(good.to_bytes())
    bad["version"] = "../../etc"
    with pytest.raises(UpdateRejected, match="not a safe name"):
        ChannelEntry.parse(json.dumps(bad).encode())
    bad = json.loads(good.to_bytes())
    bad["size"] = "10"
    with pytest.raises(UpdateRejected, match="'size'"):
        ChannelEntry.parse(json.dumps(bad).encode())


# ---------------------------------------------------------------- publish


def test_publish_uploads_tarball_and_signed_manifest(
    tmp_path: Path, s3, bucket: str, s3_endpoint: str, capsys
) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    bundle = make_tiny_bundle(tmp_path / "b2", version="2", threshold=0.6)
    args = ["model", "publish", str(bundle), "--bucket", bucket, "--key", str(private),
            "--endpoint-url", s3_endpoint, "--region", "eu-west-1", "--channel", "beta",
            "--release-notes", "trained on 41 nights", "--min-guaita-version", "0.1.0"]
    assert main(args) == 0
    assert "published tiny@2 to channel beta" in capsys.readouterr().out

    raw = s3.get_object(Bucket=bucket, Key="models/beta/latest.json")["Body"].read()
    signature = s3.get_object(Bucket=bucket, Key="models/beta/latest.json.sig")["Body"].read()
    verify(raw, signature, load_public_key(public))
    entry = ChannelEntry.parse(raw)
    assert (entry.name, entry.version, entry.channel) == ("tiny", "2", "beta")
    assert entry.key == "models/tiny/2/bundle.tar.gz"
    assert entry.recommended_threshold == 0.6 and entry.release_notes == "trained on 41 nights"
    tarball = s3.get_object(Bucket=bucket, Key=entry.key)["Body"].read()
    assert len(tarball) == entry.size
    assert hashlib.sha256(tarball).hexdigest() == entry.sha256

    assert main(args) == 1  # the same release again: the channel is already there
    assert "channel beta is at tiny@2" in capsys.readouterr().err
    other = make_tiny_bundle(tmp_path / "other2", version="2", bias=(1.0, 0.0))
    assert main([*args[:2], str(other), *args[3:]]) == 1  # other bytes as the same version
    assert "versions are immutable" in capsys.readouterr().err
    lower = make_tiny_bundle(tmp_path / "b1", version="1")
    assert main([*args[:2], str(lower), *args[3:]]) == 1
    assert "publish a higher version" in capsys.readouterr().err


def test_promotion_reuses_the_tarball_and_as_version_republishes(
    tmp_path: Path, s3, bucket: str, s3_endpoint: str
) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    common = {"bucket": bucket, "private_key": private, "endpoint_url": s3_endpoint,
              "region": "eu-west-1"}
    bundle = make_tiny_bundle(tmp_path / "b3", version="3")
    beta = publish(bundle, channel="beta", **common)
    stable = publish(bundle, channel="stable", **common)  # promotion: same bytes, same key
    assert (stable.key, stable.sha256) == (beta.key, beta.sha256)
    with pytest.raises(PublishError, match="publish a higher version"):
        publish(make_tiny_bundle(tmp_path / "b2", version="2"), **common)
    # Putting model 2 back on the channel = republishing it as version 4.
    back = publish(tmp_path / "b2", as_version="4", **common)
    assert back.label == "tiny@4" and back.key == "models/tiny/4/bundle.tar.gz"
    tarball = s3.get_object(Bucket=bucket, Key=back.key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["version"] == "4"


def test_publish_refuses_a_broken_bundle(tmp_path: Path, bucket: str, s3_endpoint: str,
                                         capsys) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    broken = make_tiny_bundle(tmp_path / "bad", version="2", broken="wrong_shape")
    assert main(["model", "publish", str(broken), "--bucket", bucket, "--key", str(private),
                 "--endpoint-url", s3_endpoint, "--region", "eu-west-1"]) == 1
    assert "output shape" in capsys.readouterr().err


# ---------------------------------------------------------------- station admin


def test_list_current_rollback_on_a_station(tmp_path: Path, bucket: str, s3_endpoint: str,
                                            capsys) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    shipped = make_tiny_bundle(tmp_path / "shipped", version="1", threshold=0.4)
    config = tmp_path / "guaita.toml"
    config.write_text(f"""
[paths]
state = "{tmp_path / 'state'}"
model = "{shipped}"
[updates]
enabled = true
bucket = "{bucket}"
endpoint_url = "{s3_endpoint}"
public_key = "{public}"
""")
    assert main(["model", "rollback", "--config", str(config)]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err

    assert main(["model", "publish", str(make_tiny_bundle(tmp_path / "b2", version="2")),
                 "--bucket", bucket, "--key", str(private), "--endpoint-url", s3_endpoint,
                 "--region", "eu-west-1"]) == 0
    manager = ModelManager(parse_config(config.read_text()))
    assert manager.check() == "switched to tiny@2"
    capsys.readouterr()

    assert main(["model", "list", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "ROLE", "THRESHOLD"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows == {"tiny@2": "active", "tiny@1": "previous,shipped"}

    assert main(["model", "current", "--config", str(config), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["active"]["label"] == "tiny@2" and info["previous"]["label"] == "tiny@1"
    assert info["threshold"] == 0.5 and info["trial"]["label"] == "tiny@2"
    assert main(["model", "current", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "tiny@2" in text and "recommended by the model" in text and "switched" in text

    assert main(["model", "rollback", "--config", str(config), "--reason", "too many planes"]) == 0
    assert "rolled back: tiny@2 → tiny@1" in capsys.readouterr().out
    assert main(["model", "list", "--config", str(config), "--json"]) == 0
    roles = {r["label"]: r["roles"] for r in json.loads(capsys.readouterr().out)}
    assert roles["tiny@1"] == ["active", "shipped"]
    assert main(["model", "current", "--config", str(config), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["blocked"]["tiny@2"]["reason"] == "too many planes"
    assert info["threshold"] == 0.4 and info["trial"] is None
    # The running daemon follows the pointer, and will not reinstall the blocked version.
    manager.sync_pointer()
    assert manager.active().bundle.label == "tiny@1"
    assert manager.check().startswith("skipped: it was rolled back (too many planes)")


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("toml", "key"), [
    ('[updates]\ncredentials_provider = "x.iot"', "updates.role_alias"),
    ('[updates]\nrole_alias = "a"', "updates.credentials_provider"),
    ('[updates]\ncredentials_provider = "x.iot"\nrole_alias = "a"',
     "updates.credentials_provider: needs mqtt.tls.cert"),
    ('[updates]\nenabled = true\nbucket = "b"\npublic_key = "/nonexistent.pub"',
     "updates.public_key: file not found"),
    ("[updates]\nguard_max_rate = 0", "updates.guard_max_rate"),
    ("[updates]\nguard_min_frames = 300\nguard_window_frames = 100",
     "updates.guard_window_frames"),
    ('[updates]\nchannel = "a/b"', "updates.channel"),
    ("[updates]\nmax_bundle_mb = 0", "updates.max_bundle_mb"),
])
def test_updates_config_errors_name_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(toml)
