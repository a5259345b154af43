"""Every river object the checkpoints are built from loads through the restricted unpickler.

Guards the allow-list against being too tight: the shipped examples' river
blobs (model, metrics, drift detectors, as the trainer writes them) and
river's common estimators, metrics and detectors, each after learning a few
hundred examples, load through ``safe_loads`` and then behave exactly like the
same bytes loaded by plain ``pickle.loads`` (same predictions, metric values
and drift flags on further input). It also checks the committed lists are
exactly what :mod:`services.checkpoints.state.allowlist_gen` records, so a
river upgrade that changes them is noticed here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from schemas.errors import CheckpointError, CheckpointNotFoundError, UnsafePickleError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state import safe_pickle
from services.checkpoints.state.allowlist_gen import Specimen, corpus, record
from services.checkpoints.state.river_state import RiverAdapter
from services.checkpoints.state.safe_pickle import safe_dumps, safe_loads
from tests.unit.store_helpers import make_store

SPECIMENS = corpus()


@pytest.mark.parametrize("specimen", SPECIMENS, ids=[s.name for s in SPECIMENS])
def test_learned_river_object_round_trips_through_safe_loads(specimen: Specimen) -> None:
    blob = pickle.dumps({"obj": specimen.obj}, protocol=5)
    restricted = safe_loads(blob)["obj"]
    plain = pickle.loads(blob)["obj"]
    assert safe_dumps({"obj": specimen.obj}) == blob
    assert type(restricted) is type(specimen.obj)
    assert specimen.probe(restricted) == specimen.probe(plain)


def test_committed_allow_list_is_what_the_corpus_pickles() -> None:
    seen = record(SPECIMENS)
    assert seen.globals == safe_pickle.ALLOWED_GLOBALS
    assert seen.callables == safe_pickle.CALLABLE_GLOBALS
    assert seen.methods == safe_pickle.ALLOWED_METHODS


def test_shipped_examples_are_in_the_corpus() -> None:
    names = {s.name for s in SPECIMENS}
    assert {"example:river-logreg", "example:torch-fm"} <= names


def test_river_state_the_unpickler_would_refuse_fails_at_save(tmp_path: Path) -> None:
    """Without this a model outside the list saved fine and every load then failed."""
    from river import forest

    checkpointer = Checkpointer(make_store(tmp_path), CheckpointerConfig(async_saves=False))
    with pytest.raises(CheckpointError, match="allow-list") as info:
        checkpointer.save("r", RiverAdapter({"model": forest.ARFClassifier(seed=1)}), step=1)
    assert "river.forest.adaptive_random_forest.ARFClassifier" in str(info.value)
    assert not isinstance(info.value, UnsafePickleError)
    with pytest.raises(CheckpointNotFoundError):
        checkpointer.load("r")


@pytest.mark.parametrize("protocol", [4, 5])
def test_plain_data_round_trips_at_the_protocols_river_state_uses(protocol: int) -> None:
    shared = [1.5, "x"]
    data = {
        "nested": [[[1, 2], (3, 4)], {"k": (5.0, None, True)}],
        "sets": ({1, 2}, frozenset({(1, 2), "a"})),
        "bytes": b"\x00\xff" * 300,
        "big": 2**200,
        "shared": (shared, shared),
        "deep": [[[[[[[[[[["bottom"]]]]]]]]]]],
    }
    loaded = safe_loads(pickle.dumps(data, protocol=protocol))
    assert loaded == data
    assert loaded["shared"][0] is loaded["shared"][1]
