"""Retention from the model configuration, as the trainer worker hands it to the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.errors import ConfigError
from schemas.manifest import ManifestDraft
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.learning.config import (
    LearningConfig,
    PolicyConfig,
    example_path,
    load_config,
    parse_config,
)
from services.learning.retention import build_retention, policy_of


def learning(retention: dict[str, Any] | None) -> LearningConfig:
    model: dict[str, Any] = {
        "name": "a",
        "kind": "river",
        "factory": {"path": "river.linear_model.LogisticRegression"},
    }
    if retention is not None:
        model["retention"] = retention
    other = {**model, "name": "b"}
    other.pop("retention", None)
    return parse_config({"model": [model, other]})


def commit(store: CheckpointStore, model: str, accuracy: float) -> str:
    draft = ManifestDraft(
        step=1, trigger="count", metrics={"accuracy": accuracy}, key_metric="accuracy"
    )
    return store.commit(model, {"w.bin": str(accuracy).encode()}, draft).version


def test_each_model_keeps_what_its_own_table_says(tmp_path: Path) -> None:
    config = learning(
        {
            "policies": [
                {"policy": "latest_n", "params": {"n": 1}},
                {"policy": "best_n", "params": {"n": 1, "metric": "accuracy"}},
            ]
        }
    )
    store_config = StoreConfig(root=tmp_path, fsync=False, keep_latest=3)
    store = CheckpointStore(store_config, retention=build_retention(config, store_config))
    a = [commit(store, "a", acc) for acc in (0.5, 0.9, 0.6, 0.7, 0.4)]
    b = [commit(store, "b", acc) for acc in (0.5, 0.9, 0.6, 0.7, 0.4)]
    kept_a = {m.version for m in store.manifests("a")}
    kept_b = {m.version for m in store.manifests("b")}
    # a: the newest and the most accurate (accuracy is maximised by default).
    assert kept_a == {a[1], a[4]}
    # b has no table: the store's own retention (3 newest) applies.
    assert kept_b == set(b[2:])


def test_the_shipped_examples_build() -> None:
    for name in ("river_logreg", "torch_fm"):
        config = load_config(example_path(name))
        build_retention(config, StoreConfig(root=Path("unused")))


@pytest.mark.parametrize(
    ("policy", "params", "needle"),
    [
        ("keep_everything", {}, "unknown retention policy"),
        ("latest_n", {}, "needs parameter 'n'"),
        ("latest_n", {"n": 0}, "n >= 1"),
        ("latest_n", {"n": 2, "m": 1}, "takes"),
        ("best_n", {"n": 2, "metric": "accuracy", "mode": "up"}, "mode"),
        ("one_per", {"interval_s": "often"}, "bad parameter"),
    ],
)
def test_a_wrong_table_is_a_config_error_naming_the_model(
    policy: str, params: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        policy_of(PolicyConfig(policy=policy, params=params), model="a")
    assert info.value.context["model"] == "a"
