"""Ed25519 signatures for model channel manifests.

The maintainer keeps the private key (offline, optionally passphrase-protected); every station
holds only the public key (shipped in the Debian package, path in ``updates.public_key``). A
signature is detached: the 64 raw bytes over the exact manifest bytes, stored next to it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "model-signing.key"
PUBLIC_NAME = "model-signing.pub"
PASSPHRASE_ENV = "GUAITA_SIGNING_PASSPHRASE"  # optional: encrypts/decrypts the private key


class SigningError(ValueError):
    """A missing or unusable key, or a signature that does not verify."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint, so a station can say which key signed vs which one it trusts."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def generate_keypair(outdir: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write model-signing.key (0600) and model-signing.pub into outdir; return both paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise SigningError(f"{path} already exists (refusing to overwrite a signing key)")
    private = Ed25519PrivateKey.generate()
    passphrase = _passphrase()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                encryption)
    # Create with 0600 from the start: the key must never be world-readable, even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError:
        raise SigningError(f"{path}: key is encrypted; set ${PASSPHRASE_ENV}") from None
    except ValueError as exc:
        raise SigningError(f"{path}: not a usable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read public key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key")
    return key


def sign(data: bytes, private_key: Ed25519PrivateKey) -> bytes:
    return private_key.sign(data)


def verify(data: bytes, signature: bytes, public_key: Ed25519PublicKey) -> None:
    """Raise SigningError unless `signature` is the trusted key's signature over `data`."""
    if len(signature) != 64:
        raise SigningError(f"signature is {len(signature)} bytes, an Ed25519 signature is 64")
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise SigningError(
            f"bad signature (not made over these bytes by the trusted key {key_id(public_key)})"
        ) from None
