"""JSON Schema exports of driftloop's models, for producers in other languages.

Each exported model is written to ``schemas/json/<snake_name>.v<N>.json``
(keys sorted, two-space indent, trailing newline) so a Go or Java producer can
validate its events before sending them. The files are committed; a unit test
fails when they drift from the models.

Usage::

    python -m schemas.export           # rewrite the files
    python -m schemas.export --check   # exit 1 and name the stale files

To export another model, add one line to :data:`EXPORTED`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.events import (
    CheckpointEvent,
    DeadLetter,
    FeedbackEvent,
    InferenceLog,
    ShadowScore,
    TrainingExample,
    Verdict,
    VersionEvent,
)
from schemas.limits import CURRENT_SCHEMA_VERSION
from schemas.manifest import MANIFEST_SCHEMA_VERSION, CheckpointManifest

#: Where the exports live, inside the installed package.
JSON_DIR = Path(__file__).resolve().parent / "json"

#: (model, schema version) of every exported model: one line each.
EXPORTED: tuple[tuple[type[BaseModel], int], ...] = (
    (InferenceLog, CURRENT_SCHEMA_VERSION),
    (FeedbackEvent, CURRENT_SCHEMA_VERSION),
    (TrainingExample, CURRENT_SCHEMA_VERSION),
    (CheckpointEvent, CURRENT_SCHEMA_VERSION),
    (VersionEvent, CURRENT_SCHEMA_VERSION),
    (DeadLetter, CURRENT_SCHEMA_VERSION),
    (Verdict, CURRENT_SCHEMA_VERSION),
    (ShadowScore, CURRENT_SCHEMA_VERSION),
    (CheckpointManifest, MANIFEST_SCHEMA_VERSION),
)


def file_name(model: type[BaseModel], version: int) -> str:
    """``InferenceLog``, 1 -> ``inference_log.v1.json``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", model.__name__)
    return f"{snake.lower()}.v{version}.json"


def render(model: type[BaseModel], version: int) -> bytes:
    """The JSON Schema document of ``model``, as the bytes written to its file."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def expected_files(
    exported: Iterable[tuple[type[BaseModel], int]] = EXPORTED,
) -> dict[str, bytes]:
    """File name -> content of every export the models define now."""
    return {file_name(m, v): render(m, v) for m, v in exported}


def stale_files(directory: Path = JSON_DIR) -> list[str]:
    """Names of exports in ``directory`` that are missing or differ from the models.

    Files there that no registered model produces (an older version kept for
    producers still on it) are left alone and not reported.
    """
    stale = []
    for name, content in sorted(expected_files().items()):
        path = directory / name
        if not path.is_file() or path.read_bytes() != content:
            stale.append(name)
    return stale


def write_all(directory: Path = JSON_DIR) -> list[str]:
    """Rewrite the exports that changed; return the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in stale_files(directory):
        (directory / name).write_bytes(expected_files()[name])
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m schemas.export``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export", description="Write the JSON Schema exports."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any export is stale"
    )
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for name in stale:
            print(f"stale: {args.dir / name}", file=sys.stderr)
        if stale:
            print("run `python -m schemas.export` and commit the result", file=sys.stderr)
            return 1
        print(f"{len(EXPORTED)} JSON Schema exports are up to date")
        return 0
    written = write_all(args.dir)
    for name in written:
        print(f"wrote {args.dir / name}")
    if not written:
        print(f"{len(EXPORTED)} JSON Schema exports are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
