"""Milestone pins (``prod-2026-11-27``, ``pre-drift``): labels that keep a checkpoint.

The truth is a small ``.pins.json`` per model in the hot tier, replaced
atomically; the catalog mirrors it for queries, so deleting the catalog and
reindexing loses no pin. A label names one version per model: pinning an
existing label to another version moves it.
"""

from __future__ import annotations

import re

import orjson

from schemas.errors import CheckpointError
from services.checkpoints.catalog import Catalog
from services.checkpoints.storage import CheckpointStorage

PIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$"
PINS_FILE = ".pins.json"


class PinBook:
    """Reads and writes the pins of each model."""

    def __init__(self, storage: CheckpointStorage, catalog: Catalog) -> None:
        self._storage = storage
        self._catalog = catalog

    def read(self, model: str) -> dict[str, str]:
        """``{label: version}`` of ``model``."""
        raw = self._storage.read_meta(model, PINS_FILE)
        if raw is None:
            return {}
        try:
            pins = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"pins file is not JSON: {exc}", model=model) from None
        if not isinstance(pins, dict):
            raise CheckpointError("pins file is not a JSON object", model=model)
        return {str(k): str(v) for k, v in pins.items()}

    def _write(self, model: str, pins: dict[str, str]) -> None:
        self._storage.write_meta(model, PINS_FILE, orjson.dumps(pins, option=orjson.OPT_SORT_KEYS))
        self._catalog.replace_pins(model, pins)

    def pin(self, model: str, version: str, label: str) -> str | None:
        """Pin ``version`` as ``label``; returns the version the label pointed to before."""
        if not re.fullmatch(PIN_PATTERN, label):
            raise CheckpointError(f"pin label {label!r} does not match {PIN_PATTERN}", model=model)
        pins = self.read(model)
        before = pins.get(label)
        pins[label] = version
        self._write(model, pins)
        return before if before != version else None

    def unpin(
        self, model: str, *, label: str | None = None, version: str | None = None
    ) -> list[str]:
        """Remove pin ``label`` or all pins of ``version``; returns the labels removed."""
        pins = self.read(model)
        gone = [k for k, v in pins.items() if k == label or (label is None and v == version)]
        if gone:
            self._write(model, {k: v for k, v in pins.items() if k not in gone})
        return gone
