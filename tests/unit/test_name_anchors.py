"""Names the store builds paths, SQL and Redis keys from are matched whole.

Python's ``re.match`` with a ``$`` pattern accepts a trailing newline
(``$`` matches before a final ``\\n``), so ``"fraud\\n"`` passed the store's
own model check and ``"state\\n"`` its file-name check. Every such check now
uses ``fullmatch``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import CheckpointError, DriftloopError
from schemas.manifest import CheckpointManifest, check_file_name
from services.checkpoints import layout
from services.checkpoints.catalog import Catalog
from services.checkpoints.pins import PinBook
from services.checkpoints.storage import LocalStorage


@pytest.mark.parametrize("model", ["fraud\n", "fraud\n\n", "\nfraud"])
def test_a_model_name_with_a_newline_is_refused_by_the_store(model: str) -> None:
    with pytest.raises(DriftloopError):
        layout.check_model(model)


@pytest.mark.parametrize("name", ["state.safetensors\n", "dir/state\n"])
def test_a_file_name_with_a_trailing_newline_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="relative posix path"):
        check_file_name(name)


def test_a_metric_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="metric"):
        CheckpointManifest(
            model="m", version="m-000001", label="x", created_ts=0, metrics={"acc\n": 1.0}
        )


def test_a_pin_label_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    book = PinBook(LocalStorage(tmp_path, fsync=False), Catalog(":memory:"))
    with pytest.raises(CheckpointError, match="pin label"):
        book.pin("m", "m-000001", "release-1\n")
    assert book.pin("m", "m-000001", "release-1") is None
