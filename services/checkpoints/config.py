"""Settings of the checkpoint store (``DRIFTLOOP_STORE_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.manifest import METRIC_PATTERN


class StoreConfig(BaseSettings):
    """Where checkpoints live, and what retention and tiering do after each commit.

    ``root`` is the hot tier, a local directory. ``cold_url`` is any fsspec
    URL (another directory, ``file://...``, ``s3://bucket/prefix`` through
    s3fs); empty means no cold tier. The catalog is a SQLite file next to the
    hot tier unless ``catalog_path`` says otherwise.

    Retention (applied by GC after each commit when ``gc_after_commit``): the
    newest ``keep_latest``; the best ``keep_best`` by ``best_metric``
    (``best_mode`` min or max); one per ``keep_one_per_s`` seconds; everything
    younger than ``keep_newer_than_s``; pinned milestones and whatever the
    version pointer references (live, canary, shadow and ``rollback_depth``
    previous versions) are always kept.

    Tiering: checkpoints beyond the newest ``hot_keep_newest`` or older than
    ``hot_max_age_s`` move to the cold tier (needs ``cold_url``).
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
    best_mode: Literal["min", "max"] = "min"
    keep_one_per_s: float | None = Field(default=None, gt=0)
    keep_newer_than_s: float | None = Field(default=None, gt=0)
    rollback_depth: int = Field(default=3, ge=0)

    hot_keep_newest: int | None = Field(default=None, ge=1)
    hot_max_age_s: float | None = Field(default=None, gt=0)

    @property
    def catalog_file(self) -> Path:
        """The SQLite catalog: ``catalog_path``, or ``{root}/catalog.sqlite3``."""
        return self.catalog_path if self.catalog_path is not None else self.root / "catalog.sqlite3"

    @property
    def tiering_enabled(self) -> bool:
        return bool(self.cold_url) and (
            self.hot_keep_newest is not None or self.hot_max_age_s is not None
        )
