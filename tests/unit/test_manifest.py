"""The manifest model refuses what a reader could not trust."""

from __future__ import annotations

import orjson
import pytest

from schemas.errors import SchemaError
from schemas.manifest import (
    CheckpointManifest,
    FileEntry,
    ManifestDraft,
    decode_manifest,
    encode_manifest,
    make_label,
)

SHA = "ab" * 32


def manifest(**over: object) -> CheckpointManifest:
    fields: dict[str, object] = {
        "model": "fraud",
        "version": "fraud-000042",
        "label": "fraud-000042 step=45000 drift logloss=0.3210",
        "created_ts": 1_764_200_000_000,
        "step": 45000,
        "trigger": "drift",
        "metrics": {"logloss": 0.321},
        "key_metric": "logloss",
        "offsets": {"training-examples": {"0": 17, "1": 4}},
        "files": [FileEntry(name="model.safetensors", sha256=SHA, size=10)],
    }
    fields.update(over)
    return CheckpointManifest.model_validate(fields)


def test_round_trip_through_json_is_lossless() -> None:
    m = manifest(rng={"python": [3, [1, 2], None]}, extra={"schedule": "count"})
    assert decode_manifest(encode_manifest(m)) == m


def test_label_shows_version_step_trigger_and_key_metric() -> None:
    label = make_label("fraud-000042", 45000, "drift", {"logloss": 0.321}, "logloss")
    assert label == "fraud-000042 step=45000 drift logloss=0.3210"
    assert make_label("fraud-000001", 0, "initial", {}, None) == "fraud-000001 step=0 initial"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"metrics": {"logloss": float("nan")}, "key_metric": None}, "metrics"),
        ({"metrics": {"loss": float("inf")}, "key_metric": None}, "metrics"),
        ({"key_metric": "auc"}, ""),
        ({"trigger": "whenever"}, "trigger"),
        ({"version": "other-000001"}, ""),
        ({"surprise": 1}, "surprise"),
        ({"offsets": {"t": {"zero": 1}}}, "offsets"),
        ({"label": "x" * 600}, "label"),
        ({"kind": "delta"}, ""),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(
    over: dict[str, object], field: str
) -> None:
    raw = manifest().model_dump(mode="json")
    raw.update(over)
    with pytest.raises(SchemaError) as info:
        decode_manifest(orjson.dumps(raw), path="x/manifest.json")
    assert info.value.field.startswith(field)
    assert info.value.context["path"] == "x/manifest.json"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x", "a/../../b", ".hidden", "manifest.json", "a\\b", "a//b", ""]
)
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        FileEntry(name=name, sha256=SHA, size=1)


def test_corrupt_json_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="not JSON"):
        decode_manifest(b'{"model": "fraud", ')


def test_draft_file_refs_need_a_ref_version() -> None:
    with pytest.raises(ValueError, match="ref_version"):
        ManifestDraft(file_refs={"a": FileEntry(name="a", sha256=SHA, size=1)})


def test_dependencies_cover_refs_and_delta_chain() -> None:
    m = manifest(
        kind="delta",
        base_version="fraud-000040",
        parent_version="fraud-000041",
        files=[FileEntry(name="w", sha256=SHA, size=1, ref_version="fraud-000039")],
    )
    assert m.dependencies() == {"fraud-000039", "fraud-000040", "fraud-000041"}
