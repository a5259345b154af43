"""Model configuration: TOML -> frozen models, safe factories, shipped examples."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from services.learning.adapters import RiverAdapter, TorchAdapter, build_adapter
from services.learning.config import example_path, load_config, parse_config
from services.learning.factory import build, resolve

RIVER_TOML = """
[[model]]
name = "m"
kind = "river"

[model.factory]
path = "river.linear_model.LogisticRegression"
params = { optimizer = { factory = "river.optim.SGD", params = { lr = 0.05 } } }
"""


def test_shipped_examples_load_and_build_their_models() -> None:
    river_cfg = load_config(example_path("river_logreg")).model("river-logreg")
    torch_cfg = load_config(example_path("torch_fm")).model("torch-fm")
    assert isinstance(build_adapter(river_cfg), RiverAdapter)
    assert isinstance(build_adapter(torch_cfg), TorchAdapter)
    assert river_cfg.triggers.adaptive is not None
    assert [(d.kind, d.input) for d in torch_cfg.drift] == [("ADWIN", "error")]
    assert [p.policy for p in river_cfg.retention.policies] == ["latest_n", "best_n"]


def test_nested_factory_params_are_built() -> None:
    cfg = parse_config(tomllib.loads(RIVER_TOML)).model("m")
    model = build_adapter(cfg).live_objects()["model"]
    assert type(model.optimizer).__name__ == "SGD"
    assert model.optimizer.learning_rate == 0.05


def test_config_is_frozen_and_digest_tracks_changes() -> None:
    cfg = parse_config(tomllib.loads(RIVER_TOML)).model("m")
    with pytest.raises(ValueError, match="frozen"):
        cfg.batch_size = 3  # type: ignore[misc]  # the point of the test
    changed = cfg.model_copy(update={"batch_size": 3})
    assert changed.digest() != cfg.digest()
    assert parse_config(tomllib.loads(RIVER_TOML)).model("m").digest() == cfg.digest()


@pytest.mark.parametrize(
    "path",
    ["os.system", "subprocess.Popen", "builtins.eval", "riverbank.X", "river._private.x", "river."],
)
def test_factories_outside_the_admitted_packages_are_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="factory path"):
        resolve(path)


def test_nested_factories_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="outside the admitted") as info:
        build("river.linear_model.LogisticRegression", {"optimizer": {"factory": "os.system"}})
    assert info.value.context["path"] == "os.system"


def test_a_config_cannot_widen_the_factories_it_may_name() -> None:
    """The old per-model ``allowed_prefixes`` key is refused, saying it was removed."""
    data = tomllib.loads(RIVER_TOML)
    data["model"][0]["allowed_prefixes"] = ["collections."]
    with pytest.raises(ConfigError, match="allowed_prefixes was removed") as info:
        parse_config(data)
    assert info.value.context["model"] == "m"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"kind": "torch"}, "torch models need task"),
        ({"loss": "bce"}, "torch models only"),
        ({"batch_size": 0}, "batch_size"),
        ({"drift": [{"kind": "NoSuchDetector"}]}, "drift"),
        ({"metrics": {"key": "mae"}}, "metrics.key"),
    ],
)
def test_invalid_configs_name_the_problem(patch: dict[str, object], message: str) -> None:
    data = tomllib.loads(RIVER_TOML)
    data["model"][0].update(patch)
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_duplicate_model_names_and_missing_models_are_errors(tmp_path: Path) -> None:
    data = tomllib.loads(RIVER_TOML)
    data["model"].append(dict(data["model"][0]))
    with pytest.raises(ConfigError, match="unique"):
        parse_config(data)
    with pytest.raises(ConfigError, match="no such model"):
        parse_config(tomllib.loads(RIVER_TOML)).model("other")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[model]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_river_task_mismatch_is_refused() -> None:
    data = tomllib.loads(RIVER_TOML)
    data["model"][0]["task"] = "regression"
    with pytest.raises(ConfigError, match="task=regression"):
        build_adapter(parse_config(data).model("m"))
