"""Signed bundles (Ed25519): the signature covers manifest.json byte for byte, and the manifest covers every file
(SHA-256), the threshold, the golden scores, the contract and a bundle version that only goes up.

`manifest.sig` is JSON: {"algorithm": "ed25519", "key": <fingerprint>, "signature": <base64>}. A fingerprint is
the first 16 hex digits of the SHA-256 of the raw 32-byte public key; it is what every message names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ConfigError, TrustError

__all__ = ["SIGNATURE_FILE", "Trust", "fingerprint", "generate_key", "load_private_key", "load_public_key",
           "sign_manifest"]

SIGNATURE_FILE = "manifest.sig"


def _crypto():  # noqa: ANN202 - imported lazily: the daemon without trusted keys needs no cryptography
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return InvalidSignature, serialization, ed25519


def fingerprint(public_key: object) -> str:
    _, serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined]
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> object:
    """An Ed25519 public key (PEM, as written by `edge-deploy keygen`), or ConfigError naming the file."""
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read public key: {err.strerror}") from err
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM public key ({err}); use the .pub file from edge-deploy keygen") from err
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 key; create one with edge-deploy keygen")
    return key


def load_private_key(path: Path) -> object:
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read signing key: {err.strerror}") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({err}); create one with edge-deploy keygen") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key; create one with edge-deploy keygen")
    return key


def generate_key(stem: Path) -> tuple[Path, Path, str]:
    """Write STEM.key (private, mode 0600) and STEM.pub; returns both paths and the fingerprint."""
    _, serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = stem.with_suffix(".key"), stem.with_suffix(".pub")
    if priv.exists() or pub.exists():
        raise ConfigError(f"{priv} or {pub} exists already; choose another --out (keys are never overwritten)")
    stem.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, fingerprint(key.public_key())


def sign_manifest(bundle: Path, private_key: object) -> str:
    """Sign BUNDLE/manifest.json into BUNDLE/manifest.sig; returns the key's fingerprint."""
    data = (bundle / "manifest.json").read_bytes()
    sig = private_key.sign(data)  # type: ignore[attr-defined]
    fp = fingerprint(private_key.public_key())  # type: ignore[attr-defined]
    (bundle / SIGNATURE_FILE).write_text(json.dumps(
        {"algorithm": "ed25519", "key": fp, "signature": base64.b64encode(sig).decode()}))
    return fp


@dataclass
class Trust:
    """The keys a daemon trusts and the highest bundle version it has run (rollback protection).

    With no keys every bundle is accepted (hashes are still checked), as before signing existed.
    """

    keys: dict[str, object] = field(default_factory=dict)  # fingerprint -> public key
    state_file: Path | None = None  # where the highest accepted version is kept

    @classmethod
    def from_files(cls, paths: list[Path], state_file: Path | None) -> Trust:
        keys = {}
        for p in paths:
            k = load_public_key(p)
            keys[fingerprint(k)] = k
        return cls(keys, state_file)

    @property
    def enforced(self) -> bool:
        return bool(self.keys)

    def expected(self) -> str:
        return ", ".join(sorted(self.keys))

    def highest_version(self) -> int:
        if self.state_file is None or not self.state_file.is_file():
            return 0
        try:
            return int(json.loads(self.state_file.read_text()).get("highest_bundle_version", 0))
        except (OSError, ValueError, AttributeError):
            return 0

    def verify(self, root: Path, manifest_bytes: bytes, version: object) -> str | None:
        """Check the signature of manifest_bytes and the version; returns the signer's fingerprint.

        Raises TrustError naming the fingerprint expected, when keys are configured and the bundle is unsigned,
        signed by another key, badly signed or older than a bundle already accepted.
        """
        if not self.enforced:
            return None
        invalid_sig, _, _ = _crypto()
        sig_path = root / SIGNATURE_FILE
        if not sig_path.is_file():
            raise TrustError(f"{root}: bundle is not signed ({SIGNATURE_FILE} missing); this daemon runs only bundles "
                             f"signed by key {self.expected()}: rebuild with edge-deploy --sign-key")
        try:
            sig = json.loads(sig_path.read_text())
            fp = str(sig["key"])
            raw = base64.b64decode(sig["signature"], validate=True)
        except (ValueError, KeyError, TypeError) as err:
            raise TrustError(f"{sig_path}: unreadable signature file ({err}); rebuild the bundle") from err
        key = self.keys.get(fp)
        if key is None:
            raise TrustError(f"{root}: bundle signed by key {fp}, expected key {self.expected()}; "
                             "sign it with the trusted key or add its .pub to trust.keys")
        try:
            key.verify(raw, manifest_bytes)  # type: ignore[attr-defined]
        except invalid_sig as err:
            raise TrustError(f"{root}: signature does not match manifest.json (tampered after signing); expected a "
                             f"valid signature by key {fp}") from err
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TrustError(f"{root}: signed manifest has no bundle_version; rebuild with a current edge-deploy")
        highest = self.highest_version()
        if version < highest:
            raise TrustError(f"{root}: bundle_version {version} is older than {highest}, already run here "
                             f"(rollback refused; signed by key {fp}); deploy a newer bundle")
        return fp

    def accept(self, version: int) -> None:
        """Remember version as run here, so an older bundle is refused from now on."""
        if not self.enforced or self.state_file is None or version <= self.highest_version():
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"highest_bundle_version": version}))
        os.replace(tmp, self.state_file)
