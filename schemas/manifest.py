"""The checkpoint manifest: what a committed checkpoint holds and how to check it.

A checkpoint is an immutable directory ``{store}/{model}/{version}/`` holding
named state files and ``manifest.json``, written last. The manifest lists the
sha256 and size of every file, so a reader can refuse bytes that changed, and
records everything needed to resume training where it stopped (offsets, RNG,
step, config, code version).

- :class:`FileEntry` — one stored file (or one reused from another checkpoint
  of the same model, ``ref_version`` set).
- :class:`ManifestDraft` — what a caller supplies when committing; the store
  fills in version, label, creation time and the file list.
- :class:`CheckpointManifest` — the committed manifest, ``manifest.json``.
- :class:`ManifestSignature` — the Ed25519 signature a manifest carries, and
  :func:`signing_payload`, the exact bytes it signs.

Models are strict: unknown fields, non-finite metrics, unsafe file names and
over-long strings are refused with :class:`~schemas.errors.SchemaError` when
decoding with :func:`decode_manifest`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import SchemaError
from schemas.events import CheckpointTrigger

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: What caused a checkpoint to be taken (the same words as CheckpointEvent's).
Trigger = CheckpointTrigger
TRIGGERS: tuple[str, ...] = get_args(Trigger)

#: A model name: a path segment that is safe everywhere (local dirs, S3 keys, SQL, Redis keys).
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: A version id: ``{model}-{seq}`` with at least six digits, e.g. ``fraud-000042``.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[0-9]{6,12}$"
#: A metric name (also used as a JSON path key by the catalog, so no quotes).
METRIC_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:/@-]{0,63}$"
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,127}$")
_SHA256 = r"^[0-9a-f]{64}$"
#: A signing key id: the first 16 hex characters of the sha256 of the raw public key.
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"
#: An Ed25519 signature (64 bytes), standard base64.
_SIGNATURE_B64 = r"^[A-Za-z0-9+/]{86}==$"
#: Prefix of every signed payload, so a manifest signature can never be taken for
#: (or made from) a signature over anything else the same key might sign.
SIGNING_DOMAIN = b"driftloop-manifest-v1\n"


def check_file_name(name: str) -> str:
    """Return ``name`` if it is a safe relative posix path inside a checkpoint.

    Refused: absolute paths, ``.``/``..`` segments, hidden segments (the store
    keeps its own bookkeeping files hidden), backslashes, and ``manifest.json``.
    """
    if len(name) > 255 or name == MANIFEST_NAME:
        raise ValueError(f"file name {name!r} is reserved or too long")
    if not all(_SEGMENT.fullmatch(part) and part not in (".", "..") for part in name.split("/")):
        raise ValueError(
            f"file name {name!r} must be a relative posix path of segments [A-Za-z0-9_.=+-] "
            "not starting with '.'"
        )
    return name


class FileEntry(BaseModel):
    """One file of a checkpoint: its name, sha256 and size.

    ``ref_version`` is set when the bytes are not stored in this checkpoint
    but in an older checkpoint of the same model (a differential save reusing
    an unchanged file by content hash). The reader then finds the bytes in
    that checkpoint by their sha256, and retention keeps that checkpoint.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(max_length=255)
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)
    ref_version: str | None = Field(default=None, pattern=VERSION_PATTERN)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_file_name(name)


class _ManifestFields(BaseModel):
    """Fields shared by a draft and a committed manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    parent_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    step: int = Field(default=0, ge=0)
    examples_seen: int = Field(default=0, ge=0)
    trigger: Trigger = "manual"
    metrics: dict[str, float] = Field(default_factory=dict, max_length=256)
    key_metric: str | None = Field(default=None, pattern=METRIC_PATTERN)
    offsets: dict[str, dict[str, int]] = Field(default_factory=dict)
    rng: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    code_version: dict[str, str] = Field(default_factory=dict, max_length=32)
    example_digest: str | None = Field(default=None, max_length=256)
    state_digest: str | None = Field(default=None, max_length=256)
    kind: Literal["full", "delta"] = "full"
    base_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=32)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, metrics: dict[str, float]) -> dict[str, float]:
        for name in metrics:
            if not re.fullmatch(METRIC_PATTERN, name):
                raise ValueError(f"metric name {name!r} does not match {METRIC_PATTERN}")
        return metrics

    @field_validator("offsets")
    @classmethod
    def _offsets(cls, offsets: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for topic, parts in offsets.items():
            if not 0 < len(topic) <= 249:
                raise ValueError(f"topic name {topic!r} must have 1..249 characters")
            for partition, offset in parts.items():
                if not partition.isdigit() or offset < 0:
                    raise ValueError(
                        f"offset {topic}[{partition}]={offset}: partition must be digits "
                        "and offset >= 0"
                    )
        return offsets

    @field_validator("code_version")
    @classmethod
    def _code_version(cls, code_version: dict[str, str]) -> dict[str, str]:
        if any(len(k) > 64 or len(v) > 256 for k, v in code_version.items()):
            raise ValueError("code_version keys must be <= 64 and values <= 256 characters")
        return code_version

    @model_validator(mode="after")
    def _consistent(self) -> _ManifestFields:
        if self.key_metric is not None and self.key_metric not in self.metrics:
            raise ValueError(f"key_metric {self.key_metric!r} is not among the metrics")
        if self.kind == "delta" and self.base_version is None:
            raise ValueError("a delta checkpoint needs base_version")
        if self.kind == "delta" and self.parent_version is None:
            raise ValueError("a delta checkpoint needs parent_version")
        return self


class ManifestDraft(_ManifestFields):
    """What a caller supplies to :meth:`CheckpointStore.commit`.

    ``file_refs`` maps a file name of the new checkpoint to a
    :class:`FileEntry` (``ref_version`` set) of an older checkpoint of the same
    model whose bytes are reused instead of rewritten. The store checks that
    the referenced checkpoint holds bytes with that sha256.
    """

    file_refs: dict[str, FileEntry] = Field(default_factory=dict)

    @field_validator("file_refs")
    @classmethod
    def _refs(cls, refs: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name, entry in refs.items():
            check_file_name(name)
            if entry.ref_version is None:
                raise ValueError(f"file_refs[{name!r}] needs ref_version")
        return refs


class ManifestSignature(BaseModel):
    """Who vouches for a manifest: an Ed25519 signature over :func:`signing_payload`.

    ``key_id`` names the public key that verifies it (see
    :mod:`services.checkpoints.signing`), ``value`` is the 64-byte signature
    in standard base64.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=KEY_ID_PATTERN)
    value: str = Field(pattern=_SIGNATURE_B64)


class CheckpointManifest(_ManifestFields):
    """A committed checkpoint's ``manifest.json``.

    ``signature`` is optional so that manifests written before signing existed
    still decode (they are valid, listed and kept, but no loader reads their
    state until an operator adopts them: ``driftloop checkpoints sign --adopt``).
    """

    schema_version: int = Field(default=MANIFEST_SCHEMA_VERSION, ge=1, le=MANIFEST_SCHEMA_VERSION)
    model: str = Field(pattern=MODEL_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    label: str = Field(max_length=512)
    created_ts: int = Field(ge=0)
    files: list[FileEntry] = Field(default_factory=list, max_length=100_000)
    signature: ManifestSignature | None = None

    @model_validator(mode="after")
    def _own_version(self) -> CheckpointManifest:
        if not self.version.startswith(self.model + "-"):
            raise ValueError(f"version {self.version!r} does not belong to model {self.model!r}")
        names = [f.name for f in self.files]
        if len(names) != len(set(names)):
            raise ValueError("file names in a manifest must be unique")
        if any(f.ref_version == self.version for f in self.files):
            raise ValueError("a file cannot reference its own checkpoint")
        return self

    @property
    def seq(self) -> int:
        """The sequence number in the version id (``fraud-000042`` -> 42)."""
        return int(self.version.rsplit("-", 1)[1])

    @property
    def size(self) -> int:
        """Bytes stored in this checkpoint itself (files referenced elsewhere excluded)."""
        return sum(f.size for f in self.files if f.ref_version is None)

    def file(self, name: str) -> FileEntry | None:
        """The entry named ``name``, or None."""
        return next((f for f in self.files if f.name == name), None)

    def dependencies(self) -> set[str]:
        """Versions this checkpoint needs to be read or reconstructed.

        The holders of referenced files, and for a delta its base. The parent
        chain of a delta is followed by the caller (see retention).
        """
        deps = {f.ref_version for f in self.files if f.ref_version is not None}
        if self.kind == "delta":
            deps |= {v for v in (self.base_version, self.parent_version) if v is not None}
        return deps


def make_label(
    version: str, step: int, trigger: str, metrics: dict[str, float], key: str | None
) -> str:
    """The readable listing label, e.g. ``fraud-000042 step=45000 drift logloss=0.3210``."""
    label = f"{version} step={step} {trigger}"
    if key is not None and key in metrics:
        label += f" {key}={metrics[key]:.4f}"
    return label


def encode_manifest(manifest: CheckpointManifest) -> bytes:
    """``manifest.json`` bytes: sorted keys, indented, UTF-8."""
    return orjson.dumps(
        manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    )


def signing_payload(manifest: CheckpointManifest) -> bytes:
    """The exact bytes a manifest's signature covers.

    :data:`SIGNING_DOMAIN` followed by the canonical JSON of the manifest
    without its ``signature``: the validated model dumped in JSON mode with
    fields at their default left out, encoded by orjson with sorted keys and no
    whitespace. Everything else is covered — model and version (so a signed
    manifest cannot be moved under another checkpoint's path unnoticed, the
    loader compares them with the path it opened), the parent chain, offsets,
    and the sha256 and size of every file. Leaving defaults out means a field
    added later with a default does not change the payload of manifests
    written before it existed, so their signatures stay valid.

    The payload is computed from the decoded model on both sides (signer and
    verifier), never from the file's bytes, so indentation and key order in
    ``manifest.json`` do not matter.
    """
    body = manifest.model_dump(mode="json", exclude={"signature"}, exclude_defaults=True)
    return SIGNING_DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def decode_manifest(data: bytes, **context: Any) -> CheckpointManifest:
    """Parse and validate ``manifest.json`` bytes.

    Raises
    ------
    SchemaError
        When the bytes are not JSON or do not validate; ``field`` names the
        first offending field, ``context`` (e.g. path) is attached.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"manifest is not JSON: {exc}", **context) from None
    try:
        return CheckpointManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SchemaError(first["msg"], field=field, **context) from None
