"""Settings of the checkpoint store (``DRIFTLOOP_STORE_*``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import limits as L
from schemas.manifest import METRIC_PATTERN
from services.config import redact_url


def default_key_dir() -> Path:
    """``$XDG_CONFIG_HOME/driftloop/keys``, else ``~/.config/driftloop/keys``."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "driftloop" / "keys"


class StoreConfig(BaseSettings):
    """Where checkpoints live, and what retention and tiering do after each commit.

    ``root`` is the hot tier, a local directory. ``cold_url`` is any fsspec
    URL (another directory, ``file://...``, ``s3://bucket/prefix`` through
    s3fs); empty means no cold tier. The catalog is a SQLite file next to the
    hot tier unless ``catalog_path`` says otherwise.

    Retention (applied by GC after each commit when ``gc_after_commit``): the
    newest ``keep_latest``; the best ``keep_best`` by ``best_metric``
    (``best_mode`` min or max; by default from the metric: max for accuracy,
    min for losses and errors); one per ``keep_one_per_s`` seconds; everything
    younger than ``keep_newer_than_s``; pinned milestones and whatever the
    version pointer references (live, canary, shadow and ``rollback_depth``
    previous versions, at most 64; the version pointer keeps as many in its
    rollback history) are always kept.

    Tiering: checkpoints beyond the newest ``hot_keep_newest`` or older than
    ``hot_max_age_s`` move to the cold tier (needs ``cold_url``).

    Signing (see :mod:`services.checkpoints.signing`): every manifest is
    signed with Ed25519 when committed, and no state file is read before its
    manifest's signature verifies against a trusted key.

    - ``signing_key`` (``DRIFTLOOP_STORE_SIGNING_KEY``): the writer's private
      key, PEM (PKCS8) text or the base64 of its raw 32 bytes; a secret, never
      printed. ``signing_key_file`` (``DRIFTLOOP_STORE_SIGNING_KEY_FILE``): a
      file holding the same (e.g. made by ``generate_key_file``). Set at most
      one. A store without either reads, lists and GCs but refuses to commit,
      so a writer (the trainer) without a key refuses to start.
    - ``trusted_keys`` (``DRIFTLOOP_STORE_TRUSTED_KEYS``, a JSON list): public
      keys whose signatures are accepted, each the base64 of the raw 32 bytes,
      PEM (SubjectPublicKeyInfo) text, or the path of a PEM file. The signing
      key's own public key is always trusted; a read-only process sets only
      this. Rotation: sign with a new key and keep the old public key here,
      and every version the old key signed stays loadable.
    - ``key_dir`` (``DRIFTLOOP_STORE_KEY_DIR``): where the embedded default
      (demo, tests, benchmarks; :func:`~services.checkpoints.signing.ensure_default_key`)
      generates its key on first use; ``$XDG_CONFIG_HOME/driftloop/keys`` or
      ``~/.config/driftloop/keys``. It must lie outside the store: whoever can
      write the store must not find the key there.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_STORE_", frozen=True, extra="ignore")

    root: Path = Path("checkpoints")
    cold_url: str = ""
    catalog_path: Path | None = None
    fsync: bool = True

    gc_after_commit: bool = True
    keep_latest: int = Field(default=5, ge=1)
    keep_best: int = Field(default=0, ge=0)
    best_metric: str | None = Field(default=None, pattern=METRIC_PATTERN)
    best_mode: Literal["min", "max"] | None = None
    keep_one_per_s: float | None = Field(default=None, gt=0)
    keep_newer_than_s: float | None = Field(default=None, gt=0)
    rollback_depth: int = Field(default=3, ge=0, le=L.MAX_ROLLBACK_HISTORY)

    hot_keep_newest: int | None = Field(default=None, ge=1)
    hot_max_age_s: float | None = Field(default=None, gt=0)

    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    trusted_keys: tuple[str, ...] = ()
    key_dir: Path = Field(default_factory=default_key_dir)

    @field_validator("cold_url")
    @classmethod
    def _no_credentials_in_url(cls, url: str) -> str:
        # The cold tier's URL becomes the catalog's locations and the CLI's output:
        # a secret in it would be printed. Filesystems take theirs from their own
        # settings (s3fs: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile).
        if redact_url(url) != url:
            raise ValueError(
                "the cold tier URL carries a credential (or does not parse): give credentials"
                " to the filesystem through its own settings (for s3://, AWS_ACCESS_KEY_ID /"
                " AWS_SECRET_ACCESS_KEY or a profile), never in the URL"
            )
        return url

    @model_validator(mode="after")
    def _one_signing_key(self) -> StoreConfig:
        if self.signing_key is not None and self.signing_key_file is not None:
            raise ValueError("set signing_key or signing_key_file, not both")
        return self

    @property
    def catalog_file(self) -> Path:
        """The SQLite catalog: ``catalog_path``, or ``{root}/catalog.sqlite3``."""
        return self.catalog_path if self.catalog_path is not None else self.root / "catalog.sqlite3"

    @property
    def tiering_enabled(self) -> bool:
        return bool(self.cold_url) and (
            self.hot_keep_newest is not None or self.hot_max_age_s is not None
        )
