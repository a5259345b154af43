"""Ed25519 manifest signatures: only state a trusted writer committed is ever read.

A checkpoint's ``manifest.json`` lists the sha256 and size of every state
file, so signing the manifest vouches for every byte of the checkpoint. The
writer (the trainer) holds a private key kept outside the store; every loader
holds a set of trusted public keys and checks, before it reads any state file:

1. the manifest carries a signature (else ``unsigned``),
2. its ``key_id`` names a trusted key (else ``unknown_key``),
3. the signature verifies over :func:`~schemas.manifest.signing_payload`
   (else ``bad_signature``),
4. the manifest's model and version are those of the path opened (else
   ``wrong_checkpoint``: an old signed version swapped in for a newer one).

Each failure is a :class:`~schemas.errors.CheckpointSignatureError`.

- :class:`Signer` — a private key and its key id; signs manifests.
- :class:`TrustedKeys` — public keys by key id; verifies manifests.
- :func:`key_id` — first 16 hex characters of the sha256 of the raw 32-byte
  public key.
- :func:`load_private_key`, :func:`load_public_key` — PEM (PKCS8 private,
  SubjectPublicKeyInfo public) or base64 of the raw 32 bytes.
- :func:`generate_key_file` — a new private key PEM, mode 0600, written
  atomically, never over an existing file.
- :func:`signer_from_config`, :func:`trusted_from_config` — what
  :class:`~services.checkpoints.store.CheckpointStore` builds from its
  :class:`~services.checkpoints.config.StoreConfig`.
- :func:`ensure_default_key` — the embedded default (demo, tests,
  benchmarks): a key generated in ``key_dir`` on first use.

What signing protects: nobody without the private key can make a loader
read bytes of their choosing, whether they rewrite state files, manifests or
both, strip a signature, or move signed checkpoints around. What it does not:
a holder of the key (or of write access to ``trusted_keys``) is trusted
completely; and a signed checkpoint can still be deleted or hidden (that is
what GC, pins and ``checkpoints verify`` look after).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import CheckpointSignatureError, ConfigError
from schemas.manifest import CheckpointManifest, ManifestSignature, signing_payload
from services.checkpoints.config import StoreConfig

ALGORITHM = "ed25519"
#: File name of the embedded default's private key inside ``key_dir``.
DEFAULT_KEY_NAME = "checkpoint-signing.pem"
_RAW_KEY_BYTES = 32


def raw_public_bytes(public: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex characters of the sha256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_bytes(public)).hexdigest()[:16]


def public_key_b64(public: Ed25519PublicKey) -> str:
    """The base64 of the raw public key: one entry of ``trusted_keys``."""
    return base64.b64encode(raw_public_bytes(public)).decode()


def _raw32(text: str) -> bytes | None:
    """The 32 bytes ``text`` is the base64 of, or None."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _RAW_KEY_BYTES else None


def load_private_key(data: str | bytes, *, source: str = "signing key") -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS8, unencrypted) or base64 of its raw 32 bytes.

    Raises
    ------
    ConfigError
        When ``data`` is neither, or holds another kind of key; the key
        material never appears in the message.
    """
    text = data.decode("ascii", errors="replace") if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source} is not a readable PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{source} is not an Ed25519 key", kind=type(key).__name__)
        return key
    raw = _raw32(text)
    if raw is None:
        raise ConfigError(
            f"{source} is neither PEM nor the base64 of a raw 32-byte Ed25519 private key"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_public_key(data: str | bytes, *, source: str = "trusted key") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or base64 of its raw 32 bytes.

    Raises
    ------
    ConfigError
        When ``data`` is neither, or holds another kind of key.
    """
    text = data.decode("ascii", errors="replace") if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source} is not a readable PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{source} is not an Ed25519 key", kind=type(key).__name__)
        return key
    raw = _raw32(text)
    if raw is None:
        raise ConfigError(f"{source} is neither PEM nor the base64 of a raw 32-byte public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file: {exc.strerror}", path=str(path)) from None


def public_key_pem(public: Ed25519PublicKey) -> bytes:
    """A public key as PEM (SubjectPublicKeyInfo), e.g. to hand to read-only processes."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Signer:
    """A private key that signs manifests, and its key id.

    Parameters
    ----------
    private:
        The Ed25519 private key.
    """

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = private.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_text(cls, data: str | bytes) -> Signer:
        """From PEM text or the base64 of the raw 32 bytes (see :func:`load_private_key`)."""
        return cls(load_private_key(data))

    @classmethod
    def from_file(cls, path: Path | str) -> Signer:
        """From a file holding what :meth:`from_text` takes."""
        path = Path(path)
        data = _read_key_file(path, "signing key")
        return cls(load_private_key(data, source=f"signing key file {path}"))

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh random key (kept only in memory)."""
        return cls(Ed25519PrivateKey.generate())

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS8 PEM (what :func:`generate_key_file` writes)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, manifest: CheckpointManifest) -> CheckpointManifest:
        """``manifest`` with its signature set to this key's signature over its payload."""
        value = self._private.sign(signing_payload(manifest))
        signature = ManifestSignature(
            algorithm=ALGORITHM, key_id=self.key_id, value=base64.b64encode(value).decode()
        )
        return manifest.model_copy(update={"signature": signature})

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


class TrustedKeys:
    """The public keys whose signatures a loader accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: Ed25519PublicKey) -> str:
        """Trust ``key``; returns its key id."""
        kid = key_id(key)
        self._keys[kid] = key
        return kid

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TrustedKeys:
        """From ``trusted_keys`` entries: base64 raw keys, PEM text, or paths of PEM files.

        Raises
        ------
        ConfigError
            An entry that is none of these (a path that does not exist, a key
            of another kind).
        """
        trusted = cls()
        for entry in entries:
            text = entry.strip()
            if "-----BEGIN" in text or _raw32(text) is not None:
                trusted.add(load_public_key(text))
                continue
            path = Path(text).expanduser()
            if not path.is_file():
                raise ConfigError(
                    "trusted key is neither the base64 of a raw 32-byte key, PEM text, nor an "
                    "existing PEM file",
                    path=str(path),
                )
            data = _read_key_file(path, "trusted key")
            trusted.add(load_public_key(data, source=f"trusted key file {path}"))
        return trusted

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_ids)

    def verify(
        self,
        manifest: CheckpointManifest,
        *,
        model: str,
        version: str,
        path: str | None = None,
    ) -> CheckpointManifest:
        """Return ``manifest`` if a trusted key signed it and it is ``model``/``version``.

        ``model`` and ``version`` are those of the path the manifest was read
        from (``path``, for the message).

        Raises
        ------
        CheckpointSignatureError
            ``reason`` says which check failed (see the module docstring).
        """
        context = {"model": model, "version": version, "path": path}
        signature = manifest.signature
        if signature is None:
            raise CheckpointSignatureError(
                "manifest is unsigned: no state of it is read until an operator signs it "
                "(`driftloop checkpoints sign --adopt`)",
                reason="unsigned",
                **context,
            )
        public = self._keys.get(signature.key_id)
        if public is None:
            raise CheckpointSignatureError(
                "manifest is signed by a key that is not trusted (add its public key to "
                "DRIFTLOOP_STORE_TRUSTED_KEYS if it is yours)",
                reason="unknown_key",
                key_id=signature.key_id,
                trusted=",".join(self.key_ids) or "none",
                **context,
            )
        try:
            public.verify(base64.b64decode(signature.value), signing_payload(manifest))
        except (InvalidSignature, binascii.Error, ValueError):
            raise CheckpointSignatureError(
                "manifest signature does not verify: the manifest changed after it was signed",
                reason="bad_signature",
                key_id=signature.key_id,
                **context,
            ) from None
        if manifest.model != model or manifest.version != version:
            raise CheckpointSignatureError(
                f"manifest is that of {manifest.model}/{manifest.version}, not of the "
                "checkpoint opened",
                reason="wrong_checkpoint",
                key_id=signature.key_id,
                **context,
            )
        return manifest


def signer_from_config(config: StoreConfig) -> Signer | None:
    """The signer ``signing_key`` or ``signing_key_file`` names, or None when neither is set.

    Raises
    ------
    ConfigError
        The key cannot be read or is not an Ed25519 private key.
    """
    if config.signing_key is not None:
        return Signer(
            load_private_key(
                config.signing_key.get_secret_value(), source="DRIFTLOOP_STORE_SIGNING_KEY"
            )
        )
    if config.signing_key_file is not None:
        return Signer.from_file(config.signing_key_file.expanduser())
    return None


def trusted_from_config(config: StoreConfig, signer: Signer | None = None) -> TrustedKeys:
    """``trusted_keys`` plus the signer's own public key.

    Raises
    ------
    ConfigError
        A trusted key entry cannot be read.
    """
    trusted = TrustedKeys.from_entries(config.trusted_keys)
    if signer is not None:
        trusted.add(signer.public_key)
    return trusted


def generate_key_file(path: Path | str) -> Signer:
    """Write a new private key (PKCS8 PEM, mode 0600) to ``path``; return its signer.

    Atomic and exclusive: the key is written to a temporary file in the same
    directory (created 0700 if missing) and hard-linked into place, so
    ``path`` either does not exist or holds a whole key, and an existing file
    is never replaced.

    Raises
    ------
    FileExistsError
        ``path`` exists already (another process may have just made it).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer = Signer.generate()
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.private_pem())
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if path exists: never overwrites
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return signer


def default_key_file(config: StoreConfig) -> Path:
    """Where :func:`ensure_default_key` keeps the embedded default's key."""
    return config.key_dir.expanduser() / DEFAULT_KEY_NAME


def ensure_default_key(config: StoreConfig) -> StoreConfig:
    """``config`` with a signing key: its own, else the embedded default's.

    When neither ``signing_key`` nor ``signing_key_file`` is set, the key
    ``{key_dir}/checkpoint-signing.pem`` is used, generated on first use.
    For the demo, the embedded stack, tests and benchmarks; an ordinary
    writer without a key is refused instead (nothing calls this implicitly).

    Raises
    ------
    ConfigError
        ``key_dir`` lies inside the store's hot tier (whoever can write the
        store must not find the key there), or the key cannot be made or read.
    """
    if config.signing_key is not None or config.signing_key_file is not None:
        return config
    path = default_key_file(config)
    root = config.root.expanduser().resolve()
    if path.parent.resolve().is_relative_to(root):
        raise ConfigError(
            "the signing key directory must lie outside the checkpoint store",
            key_dir=str(config.key_dir),
            root=str(config.root),
        )
    if not path.exists():
        try:
            generate_key_file(path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError as exc:
            raise ConfigError(
                f"cannot create the default signing key: {exc.strerror}", path=str(path)
            ) from None
    Signer.from_file(path)  # fail here, not at the first commit, if it is unreadable
    return config.model_copy(update={"signing_key_file": path})
