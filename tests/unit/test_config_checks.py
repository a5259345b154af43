"""Config values that would break the trainer later are refused at load; models are
dry-built before the worker touches Kafka and before a SIGHUP reload applies.

Guards issue 8 items 1 and 7: on main these configurations loaded, and the
trainer then panicked in river's Rust code (ADWIN ``clock = 0``), aborted the
process (ADWIN ``max_buckets = 2**32 - 1``), divided by zero (HDDM
confidence 0), fired a checkpoint timer every 1e-300 s, or wrote a model the
checkpoint store refuses (a 65-character name); a model that does not build
was found only after the worker had joined the consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.config import KafkaConfig, TopicsConfig
from services.learning.buildcheck import check_buildable
from services.learning.config import example_path, load_config, parse_config
from services.learning.pool import TrainerPool
from streams import worker as worker_module
from streams.app import make_app
from streams.trainer import TrainerAgent, load_checked

BASE = """
[[model]]
name = "m"
kind = "river"
factory = { path = "river.linear_model.LogisticRegression" }
"""


def test_every_shipped_example_loads_and_builds() -> None:
    examples = sorted((Path(example_path("river_logreg")).parent).glob("*.toml"))
    assert len(examples) >= 2
    for path in examples:
        models = load_config(path).models
        assert models
        check_buildable(models)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("[[model.drift]]\nkind = 'ADWIN'\nparams = { clock = 0 }", "ADWIN.clock"),
        ("[[model.drift]]\nkind = 'ADWIN'\nparams = { max_buckets = 0 }", "ADWIN.max_buckets"),
        (
            "[[model.drift]]\nkind = 'ADWIN'\nparams = { max_buckets = 4294967295 }",
            "ADWIN.max_buckets",
        ),
        ("[[model.drift]]\nkind = 'ADWIN'\nparams = { delta = nan }", "ADWIN.delta"),
        ("[[model.drift]]\nkind = 'ADWIN'\nparams = { delta = '0.1' }", "ADWIN.delta"),
        ("[[model.drift]]\nkind = 'ADWIN'\nparams = { clocks = 3 }", "ADWIN.clocks"),
        (
            "[[model.drift]]\nkind = 'HDDM_A'\nparams = { drift_confidence = 0 }",
            "HDDM_A.drift_confidence",
        ),
        (
            "[[model.drift]]\nkind = 'HDDM_W'\nparams = { warning_confidence = 0 }",
            "HDDM_W.warning_confidence",
        ),
        ("[[model.drift]]\nkind = 'KSWIN'\nparams = { stat_size = 51 }", "stat_size"),
        ("[[model.drift]]\nkind = 'KSWIN'\nparams = { window_size = 0 }", "KSWIN.window_size"),
        (
            "[[model.drift]]\nkind = 'FHDDM'\nparams = { short_window_size = 101 }",
            "short_window_size",
        ),
        (
            "[[model.drift]]\nkind = 'FHDDM'\nparams = { sliding_window_size = 0 }",
            "FHDDM.sliding_window_size",
        ),
        (
            "[[model.drift]]\nkind = 'PageHinkley'\nparams = { threshold = nan }",
            "PageHinkley.threshold",
        ),
        ("[model.triggers]\ninterval_s = 1e-300", "triggers.interval_s"),
        ("[model.triggers]\ninterval_s = nan", "triggers.interval_s"),
        ("[model.triggers]\ninterval_s = inf", "triggers.interval_s"),
        ("[model.triggers]\nevery_n = 10_000_000_000_000", "triggers.every_n"),
        ("[model.triggers]\nadaptive = { relax = 1e308 }", "triggers.adaptive.relax"),
        ("[model.metrics]\nwindow = 100_000_000_000", "metrics.window"),
        ("[model.promotion]\nmin_improvement = nan", "promotion.min_improvement"),
        ("seed = -1", "seed"),
    ],
)
def test_values_that_break_the_trainer_later_are_refused_naming_the_field(
    extra: str, field: str
) -> None:
    if extra.startswith("["):
        data = tomllib.loads(BASE + extra)  # a sub-table of the model
    else:
        data = tomllib.loads(BASE.replace('kind = "river"', f'kind = "river"\n{extra}'))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
        parse_config(data)
    assert info.value.context["model"] == "m"


def test_a_detector_built_as_a_nested_factory_gets_the_same_bounds() -> None:
    """ADWIN(max_buckets=2**32 - 1) aborts the interpreter inside river: refused unbuilt."""
    data = tomllib.loads(
        BASE.replace(
            'factory = { path = "river.linear_model.LogisticRegression" }',
            'factory = { path = "river.tree.HoeffdingAdaptiveTreeClassifier", params = {'
            ' drift_detector = { factory = "river.drift.ADWIN",'
            " params = { max_buckets = 4294967295 } } } }",
        )
    )
    with pytest.raises(ConfigError, match=r"ADWIN\.max_buckets"):
        parse_config(data)


@pytest.mark.parametrize("name", ["abc\n", "m" * 65, "-m", "m/x", ""])
def test_a_model_name_the_store_would_refuse_is_refused(name: str) -> None:
    data = tomllib.loads(BASE)
    data["model"][0]["name"] = name
    with pytest.raises(ConfigError, match=r"model\.0\.name"):
        parse_config(data)


def test_the_longest_store_name_is_accepted() -> None:
    data = tomllib.loads(BASE)
    data["model"][0]["name"] = "m" * 64
    assert parse_config(data).models[0].name == "m" * 64


def test_a_constructor_panic_is_a_config_error_of_the_dry_build() -> None:
    """river's RollingQuantile(window_size=0) raises a pyo3 PanicException (a
    BaseException) in its constructor: the dry build reports it as a ConfigError
    naming the model instead of letting it escape."""
    panics = '{ factory = "river.stats.RollingQuantile", params = { q = 0.5, window_size = 0 } }'
    agg = (
        '{ factory = "river.feature_extraction.Agg",'
        f' params = {{ on = "x", by = "g", how = {panics} }} }}'
    )
    steps = f'[{agg}, {{ factory = "river.linear_model.LogisticRegression" }}]'
    text = BASE.replace(
        'factory = { path = "river.linear_model.LogisticRegression" }',
        'factory = { path = "services.learning.factory.pipeline",'
        f" params = {{ steps = {steps} }} }}",
    )
    models = parse_config(tomllib.loads(text)).models
    with pytest.raises(ConfigError, match="PanicException") as info:
        check_buildable(models)
    assert info.value.context["model"] == "m"


def test_the_dry_build_finds_what_only_building_finds() -> None:
    """A DDM-family detector on a regression model loads, but cannot be built."""
    text = BASE.replace(
        "river.linear_model.LogisticRegression", "river.linear_model.LinearRegression"
    )
    text += "[[model.drift]]\nkind = 'DDM'\n"
    models = parse_config(tomllib.loads(text)).models
    with pytest.raises(ConfigError, match="DDM takes 1 = error") as info:
        check_buildable(models)
    assert info.value.context["model"] == "m"


def bad_build_toml() -> str:
    return (
        BASE.replace("river.linear_model.LogisticRegression", "river.linear_model.LinearRegression")
        + "[[model.drift]]\nkind = 'HDDM_A'\n"
    )


def test_the_worker_refuses_a_model_that_does_not_build_before_creating_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(bad_build_toml())
    calls: list[object] = []
    monkeypatch.setattr(worker_module, "ensure_topics", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match="HDDM_A") as info:
        worker_module.build(
            "trainer",
            kafka=KafkaConfig(bootstrap="127.0.0.1:1"),
            topics=TopicsConfig(),
            worker=worker_module.WorkerConfig(datadir=tmp_path / "faust"),
            models_path=path,
            store=StoreConfig(root=tmp_path / "store", fsync=False),
        )
    assert info.value.context["model"] == "m"
    assert calls == []


def test_a_refused_sighup_reload_keeps_the_running_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(BASE + "batch_size = 4\n")
    models = list(load_config(path).models)
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    topics = TopicsConfig()
    pool = TrainerPool(models, store, topic=topics.training_examples, partitions=1)
    app = make_app("reload-test", KafkaConfig(bootstrap="127.0.0.1:1"), datadir=tmp_path / "f")
    agent = TrainerAgent(app, topics, pool, reload=lambda: load_config(path).models)
    before = pool.lanes["m"].config
    try:
        for bad in (
            bad_build_toml() + "batch_size = 8\n",  # loads, does not build
            BASE.replace("LogisticRegression", "LogisticRegression.__init__"),  # does not load
        ):
            path.write_text(bad)
            with pytest.raises(ConfigError):
                load_checked(lambda: load_config(path).models)
            with caplog.at_level(logging.ERROR, logger="streams.trainer"):
                asyncio.run(agent._reconfigure(agent.reload))  # type: ignore[arg-type]
            assert "new configuration refused, running settings kept" in caplog.text
            assert pool.lanes["m"].config is before
            caplog.clear()
        path.write_text(BASE + "batch_size = 8\n")
        asyncio.run(agent._reconfigure(agent.reload))  # type: ignore[arg-type]
        assert pool.lanes["m"].config.batch_size == 8
    finally:
        agent._executor.shutdown(wait=True)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_factory_parameter_is_refused(value: str) -> None:
    """A nan learning rate trains nothing, silently: refused, naming the parameter."""
    text = BASE.replace(
        'factory = { path = "river.linear_model.LogisticRegression" }',
        'factory = { path = "river.linear_model.LogisticRegression", params = { optimizer ='
        f' {{ factory = "river.optim.SGD", params = {{ lr = {value} }} }} }} }}',
    )
    with pytest.raises(ConfigError, match="not a finite number") as info:
        parse_config(tomllib.loads(text))
    assert "river.optim.SGD.lr" in str(info.value)


@pytest.mark.parametrize("setting", ["tick_interval_s", "chunk_wait_s", "commit_interval_s"])
def test_worker_time_settings_have_a_sane_lower_bound(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"DRIFTLOOP_WORKER_{setting.upper()}", "1e-300")
    with pytest.raises(ValueError, match=setting):
        worker_module.WorkerConfig()


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A directory or undecodable bytes: one ConfigError, not an OSError (a SIGHUP
    reload logs ConfigErrors and keeps running)."""
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(bad)
