"""Ed25519 keys for signed checkpoints: the producer signs with the private key, verify needs the public one.

``secret-audit keygen PATH`` writes the private key to PATH (PKCS#8 PEM, mode 0600) and the public key to
PATH.pub (SubjectPublicKeyInfo PEM). A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte
public key. Errors name the file and the problem, never what the file holds.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["KeyFileError", "Signer", "generate_key", "key_id", "load_public_keys", "load_signer", "verify"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)


class KeyFileError(ValueError):
    """A key file that cannot be used; the message says why without quoting the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id a checkpoint names its key by: 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """A loaded private key and its id; signatures are 128 hex digits."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id(private_key.public_key())

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of ``data``, in hex."""
        return self._key.sign(data).hex()


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """The private key in ``path`` (Ed25519, PEM, unencrypted), ready to sign."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(path, "is encrypted; give an unencrypted key (keygen makes one)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(path, "is not a private key in PEM") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, "holds a private key of another kind; an Ed25519 key is needed") from None
    return Signer(key)


def load_public_keys(path: str | os.PathLike[str]) -> dict[str, Ed25519PublicKey]:
    """Every public key in ``path`` by key id: one PEM block (a .pub file) or several (a keyring)."""
    data = _read(path)
    keys: dict[str, Ed25519PublicKey] = {}
    for block in _PEM_BLOCK.finditer(data):
        if b"PRIVATE" in block.group(1):
            raise KeyFileError(path, "holds a private key; give its public key (PATH.pub from keygen)")
        try:
            key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(path, "holds a PEM block that is not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(path, "holds a public key of another kind; Ed25519 keys are needed")
        keys[key_id(key)] = key
    if not keys:
        raise KeyFileError(path, "holds no public key in PEM")
    return keys


def verify(public_key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    """True when ``signature`` (hex) is the key's signature of ``data``."""
    try:
        public_key.verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_key(path: str | os.PathLike[str]) -> str:
    """Write a new key pair to PATH (0600) and PATH.pub, refusing to overwrite either; returns the key id."""
    private_path = Path(path)
    public_path = Path(f"{private_path}.pub")
    for target in (private_path, public_path):
        if target.exists() or target.is_symlink():
            raise KeyFileError(target, "exists already; keygen never overwrites a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except KeyFileError:
        private_path.unlink()
        raise
    return key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never readable by others in between), or fail."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        raise KeyFileError(path, "exists already; keygen never overwrites a key") from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be created ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; never widened past ``mode``
        f.write(data)
