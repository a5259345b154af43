"""Which checkpoints of a model can be loaded, and why the others cannot.

A checkpoint loads only when its manifest validates, every file it lists
(its own and those it references in older checkpoints) has the recorded size
and sha256, and everything it depends on (a delta's parent and base, the
holders of referenced files) loads too. So damage to one version breaks
every version built on it: :func:`unloadable` reports those children as well,
naming the version they depend on. Version directories that exist but are
not committed checkpoints because of damage count too: a corrupt manifest,
a pinned directory whose manifest is gone, a quarantined directory.

:func:`restore_order` lists a model's versions newest first for a restore
that falls back from one to the next (see
:meth:`services.learning.store_sink.CheckpointerSink.restore_latest`).

Used by ``driftloop checkpoints verify`` and the trainer; reads only.
"""

from __future__ import annotations

from schemas.errors import CheckpointError
from services.checkpoints import layout
from services.checkpoints.scan import quarantined_version, scan_model
from services.checkpoints.state.encoding import INDEX_NAME
from services.checkpoints.state.reader import load_state
from services.checkpoints.store import CheckpointStore

__all__ = ["damaged", "dangling_pins", "quarantined_version", "restore_order", "unloadable"]

#: Reason given for a pinned version directory without a manifest.
PINNED_NO_MANIFEST = "pinned, manifest missing"


def damaged(store: CheckpointStore, model: str) -> dict[str, str]:
    """Version directories of ``model`` that are damaged rather than committed.

    Corrupt manifests, pinned directories without a manifest, and quarantined
    directories (by the version they held); ``{version: reason}``.
    """
    scan = scan_model(model, store.reader.tiers(), store.catalog, deep=True)
    found: dict[str, str] = {}
    for q in store.quarantined(model):
        version = quarantined_version(model, q.name)
        if version is not None:
            found[version] = f"quarantined: {q.reason}"
    for x in scan.corrupt:
        found[x.name] = x.reason
    try:
        pinned = set(store.pins.read(model).values())
    except CheckpointError:  # an unreadable pins file is GC's and verify's to report
        pinned = set()
    for x in scan.leftovers:
        if x.name in pinned and layout.parse_seq(model, x.name) is not None:
            found.setdefault(x.name, PINNED_NO_MANIFEST)
    return found


def dangling_pins(store: CheckpointStore, model: str) -> dict[str, str]:
    """``{label: reason}`` of the pins of ``model`` that name no committed checkpoint.

    GC keeps such pins (the label still says which version the milestone was,
    e.g. to restore it from quarantine); verify reports them.
    """
    committed = {r.version for r in store.query(model)}
    quarantined = {quarantined_version(model, q.name) for q in store.quarantined(model)}
    out: dict[str, str] = {}
    for label, version in sorted(store.pins.read(model).items()):
        if version in committed:
            continue
        where = "is quarantined" if version in quarantined else "is not in the store"
        out[label] = f"pin {label!r} names {version}, which {where}"
    return out


def _seq(model: str, version: str) -> int:
    return layout.parse_seq(model, version) or 0


def restore_order(store: CheckpointStore, model: str) -> list[tuple[str, str | None]]:
    """Every version of ``model``, newest first, with why it cannot be tried.

    ``(version, None)`` for committed checkpoints (try to load them),
    ``(version, reason)`` for damaged ones (see :func:`damaged`). Empty when
    the model has no checkpoint at all: starting from scratch is normal then.
    """
    order: dict[str, str | None] = dict.fromkeys(r.version for r in store.query(model))
    for version, reason in damaged(store, model).items():
        order.setdefault(version, reason)
    return sorted(order.items(), key=lambda item: _seq(model, item[0]), reverse=True)


def unloadable(store: CheckpointStore, model: str, *, deep: bool = True) -> dict[str, str]:
    """``{version: reason}`` of every version of ``model`` that cannot be loaded.

    Checks each committed checkpoint oldest first: its manifest, that every
    checkpoint it depends on (a delta's parent and base, the holders of the
    files it reuses) is committed with an intact chain itself, and every file
    it reads (sizes and hashes, referenced files included); with ``deep`` the
    state is also rebuilt (delta chains applied, state digest compared), so
    a damaged file of a chain member shows in each child that needs it.
    Damaged version directories (:func:`damaged`) are included. Ordered by
    version.
    """
    problems = damaged(store, model)
    #: Versions whose chain itself is broken (not only a file of their own).
    broken = set(problems)
    records = sorted(store.query(model), key=lambda r: r.seq)
    committed = {r.version for r in records}
    for record in records:
        reason, structural = _check(store, model, record.version, committed, broken, deep=deep)
        if reason is not None:
            problems[record.version] = reason
            if structural:
                broken.add(record.version)
    return dict(sorted(problems.items(), key=lambda item: _seq(model, item[0])))


def _check(
    store: CheckpointStore,
    model: str,
    version: str,
    committed: set[str],
    broken: set[str],
    *,
    deep: bool,
) -> tuple[str | None, bool]:
    """Why ``version`` does not load (None: it does), and whether its chain is broken."""
    try:
        reader = store.open(model, version)
    except CheckpointError as exc:
        return str(exc), True
    for dep in sorted(reader.manifest.dependencies()):
        if dep in broken:
            return f"depends on {dep}, which cannot be loaded", True
        if dep not in committed:
            return f"depends on {dep}, which is missing", True
    try:
        reader.verify()
        if deep and reader.manifest.file(INDEX_NAME) is not None:  # written by the state layer
            load_state(store, model, version)
    except CheckpointError as exc:
        return str(exc), False
    return None, False
