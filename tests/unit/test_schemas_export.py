"""The committed JSON Schema exports match the models, and say what the models say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel

from schemas import export
from schemas.codec import encode
from schemas.events import Event, FeedbackEvent, InferenceLog
from schemas.strategies import events


def test_committed_exports_match_the_models() -> None:
    stale = export.stale_files()
    assert stale == [], f"stale JSON Schema exports {stale}: run `python -m schemas.export`"


def test_every_registered_model_has_a_committed_file() -> None:
    committed = {p.name for p in export.JSON_DIR.glob("*.json")}
    assert set(export.expected_files()) <= committed


def test_file_names_are_snake_case_with_version() -> None:
    assert export.file_name(InferenceLog, 1) == "inference_log.v1.json"
    assert export.file_name(FeedbackEvent, 3) == "feedback_event.v3.json"

    class CheckpointManifest(BaseModel):
        pass

    assert export.file_name(CheckpointManifest, 1) == "checkpoint_manifest.v1.json"


def test_export_files_are_sorted_indented_and_end_with_newline() -> None:
    content = export.render(FeedbackEvent, 1)
    assert content.endswith(b"}\n")
    doc = json.loads(content)
    assert list(doc) == sorted(doc)
    assert doc["additionalProperties"] is False
    assert doc["$schema"].startswith("https://json-schema.org/draft/2020-12")
    assert set(doc["required"]) == {
        "schema_version",
        "event_id",
        "ts",
        "request_id",
        "model",
        "label",
    }


def test_check_names_stale_files_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export.main(["--dir", str(tmp_path)]) == 0
    assert export.main(["--check", "--dir", str(tmp_path)]) == 0
    target = tmp_path / "feedback_event.v1.json"
    target.write_text(target.read_text().replace('"maxLength": 128', '"maxLength": 64'))
    (tmp_path / "version_event.v1.json").unlink()
    capsys.readouterr()
    assert export.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "feedback_event.v1.json" in err
    assert "version_event.v1.json" in err
    assert "inference_log.v1.json" not in err


def test_rewrite_only_touches_stale_files_and_keeps_others(tmp_path: Path) -> None:
    export.main(["--dir", str(tmp_path)])
    old_version = tmp_path / "feedback_event.v0.json"
    old_version.write_text("{}\n")
    (tmp_path / "dead_letter.v1.json").write_text("{}\n")
    assert export.write_all(tmp_path) == ["dead_letter.v1.json"]
    assert old_version.read_text() == "{}\n"
    assert export.stale_files(tmp_path) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_exported_schema_accepts_every_valid_event(event: Event) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = _validator(jsonschema, type(event))
    validator.validate(json.loads(encode(event)))


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "sometimes"},
        {"weight": -1},
        {"schema_version": 2},
        {"ts": "1"},
        {"model": "../x"},
        {"extra": 1},
    ],
)
def test_exported_schema_rejects_what_decode_rejects(change: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    event = FeedbackEvent.new(request_id="r", model="m", label=1)
    doc = json.loads(encode(event)) | change
    assert not _validator(jsonschema, FeedbackEvent).is_valid(doc)


_VALIDATORS: dict[type[Event], Any] = {}


def _validator(jsonschema: Any, model: type[Event]) -> Any:
    if model not in _VALIDATORS:
        path = export.JSON_DIR / export.file_name(model, 1)
        _VALIDATORS[model] = jsonschema.Draft202012Validator(json.loads(path.read_text()))
    return _VALIDATORS[model]
