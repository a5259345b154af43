"""Where checkpoints live on disk and what their directory names mean.

::

    {root}/{model}/{model}-{seq:06d}/manifest.json   a committed checkpoint
    {root}/{model}/.tmp-{pid}-{rand}/                 a local save in progress
    {root}/{model}/.trash-{pid}-{rand}/               a local checkpoint being removed
    {root}/{model}/.quarantine/{version}-{ts}/        a version whose manifest did not validate
    {root}/{model}/.seq                               the per-model version high-water mark
    {root}/{model}/.pins.json                         milestone labels (the truth for pins)
    {root}/{model}/.seq.{pid}.tmp                     a bookkeeping file being replaced

Version ids are ``{model}-{seq:06d}``: unique, ordered by their sequence
number, never reused: the store raises the ``.seq`` high-water mark (under a
file lock) before writing a version and before GC removes one, and also counts
every directory present in either tier.
"""

from __future__ import annotations

import os
import re
import secrets
import time

from schemas.errors import SchemaError
from schemas.manifest import MODEL_PATTERN

TMP_PREFIX = ".tmp-"
#: Directory under a model holding versions moved aside because their manifest is corrupt.
QUARANTINE_DIR = ".quarantine"
#: File inside a quarantined directory saying why and when it was moved.
QUARANTINE_NOTE = ".quarantine.json"
TRASH_PREFIX = ".trash-"
#: Marker a writer on an object store leaves in a version dir until its manifest is written.
WRITER_MARKER = ".writer"

_WORK_DIR = re.compile(r"^\.(tmp|trash)-(\d+)-")
_META_TEMP = re.compile(r"^\.[A-Za-z0-9_.-]+\.(\d+)\.tmp$")


def check_model(model: str) -> str:
    """Return ``model`` if it is a valid model name, else raise :class:`SchemaError`."""
    if not re.fullmatch(MODEL_PATTERN, model):
        raise SchemaError(f"model name {model!r} does not match {MODEL_PATTERN}", field="model")
    return model


def version_id(model: str, seq: int) -> str:
    """``fraud``, 42 -> ``fraud-000042``."""
    return f"{model}-{seq:06d}"


def parse_seq(model: str, name: str) -> int | None:
    """The sequence number of a version directory name of ``model``, or None."""
    prefix = model + "-"
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix) :]
    if not (6 <= len(digits) <= 12 and digits.isdigit()):
        return None
    return int(digits)


def temp_name() -> str:
    """A fresh name for a local save in progress, carrying this process's pid."""
    return f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def quarantine_name(name: str) -> str:
    """``fraud-000042`` -> ``fraud-000042-{epoch ms}``: the name of its quarantined copy."""
    return f"{name}-{time.time_ns() // 1_000_000}"


def trash_name() -> str:
    """A fresh name for a local checkpoint being removed, carrying this process's pid."""
    return f"{TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def work_dir_pid(name: str) -> int | None:
    """The writer pid in a ``.tmp-``/``.trash-`` directory name, else None."""
    match = _WORK_DIR.match(name)
    return int(match.group(2)) if match else None


def meta_temp_name(name: str) -> str:
    """The temporary file a bookkeeping file ``name`` is written to before its rename."""
    return f"{name}.{os.getpid()}.tmp"


def meta_temp_pid(name: str) -> int | None:
    """The writer pid in a bookkeeping temp file name (``.seq.123.tmp``), else None."""
    match = _META_TEMP.match(name)
    return int(match.group(1)) if match else None


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (``created_ts``, quarantine notes, retention)."""
    return time.time_ns() // 1_000_000


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
