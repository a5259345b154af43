"""Live metrics: each served answer scored against its feedback, per version and route."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from river import metrics, utils

from schemas.events import ShadowScore, TrainingExample, shadow_score_id, training_example_id
from services.learning.adapters import build_predictor
from services.learning.config import ModelConfig, load_config, parse_config
from services.validation.live_metrics import NO_ROUTE, SHADOW_ROUTE, LiveMetrics, label_rule
from services.validation.live_store import LiveMetricsStore, metrics_key, read_live_metrics

WINDOW = 5
EXAMPLES = Path(__file__).resolve().parents[2] / "services" / "learning" / "examples"


def _models() -> dict[str, ModelConfig]:
    config = parse_config(
        {
            "model": [
                {
                    "name": "fraud",
                    "kind": "river",
                    "factory": {"path": "river.linear_model.LogisticRegression"},
                    "positive_label": "fraud",
                    "metrics": {"names": ["accuracy", "log_loss"], "window": WINDOW},
                },
                {
                    "name": "price",
                    "kind": "river",
                    "factory": {"path": "river.linear_model.LinearRegression"},
                    "metrics": {"names": ["mae"], "window": WINDOW},
                },
                {
                    "name": "topic",
                    "kind": "river",
                    "factory": {"path": "river.naive_bayes.GaussianNB"},
                    "metrics": {"names": ["accuracy", "cross_entropy"], "window": WINDOW},
                },
            ]
        }
    )
    return {m.name: m for m in config.models}


_ids = itertools.count(1)


def example(
    model: str,
    version: str,
    label: Any,
    prediction: Any = None,
    scores: Mapping[str, float] | None = None,
    *,
    route: str | None = "live",
    default: bool = False,
    ts: int = 1_000,
) -> TrainingExample:
    n = next(_ids)
    rid = f"r{n}"
    fid = None if default else f"f{n}"
    return TrainingExample.new(
        example_id=training_example_id(rid, fid),
        request_id=rid,
        model=model,
        model_version=version,
        features={"x": 1.0},
        label=label,
        label_is_default=default,
        inference_event_id=f"i{n}",
        feedback_event_id=fid,
        inference_ts=ts,
        feedback_ts=None if default else ts,
        join_latency_ms=0,
        ts=ts,
        route=route,
        prediction=prediction,
        scores=dict(scores) if scores is not None else None,
    )


def _figures(live: LiveMetrics, model: str, version: str, route: str = "live") -> dict[str, Any]:
    figures: dict[str, Any] = live.snapshot()[model][version]["routes"][route]
    return figures


def test_binary_accuracy_and_log_loss_match_river_fed_the_same_pairs() -> None:
    live = LiveMetrics(_models())
    rng = random.Random(3)
    river_metrics: dict[str, dict[str, Any]] = {}
    for version in ("fraud-000001", "fraud-000002"):
        acc, loss = metrics.Accuracy(), metrics.LogLoss()
        acc_w = utils.Rolling(metrics.Accuracy, window_size=WINDOW)
        loss_w = utils.Rolling(metrics.LogLoss, window_size=WINDOW)
        for _ in range(40):
            label = rng.choice(["fraud", "ok"])
            p = rng.random()
            live.update(example("fraud", version, label, p >= 0.5, {"true": p, "false": 1 - p}))
            y = label == "fraud"  # positive_label: the target is a bool
            for m in (acc, acc_w):
                m.update(y, p >= 0.5)
            for m in (loss, loss_w):
                m.update(y, {True: p, False: 1 - p})
        river_metrics[version] = {
            "accuracy": acc_w.get(),
            "accuracy_total": acc.get(),
            "log_loss": loss_w.get(),
            "log_loss_total": loss.get(),
        }
    for version, expected in river_metrics.items():
        figures = _figures(live, "fraud", version)
        assert figures["n"] == 40
        assert figures["window"] == WINDOW
        assert figures["metrics"] == pytest.approx(expected)


def test_regression_mae_matches_river() -> None:
    live = LiveMetrics(_models())
    rng = random.Random(5)
    mae, mae_w = metrics.MAE(), utils.Rolling(metrics.MAE, window_size=WINDOW)
    for _ in range(30):
        y, y_pred = rng.uniform(-5, 5), rng.uniform(-5, 5)
        live.update(example("price", "price-000001", y, y_pred))
        mae.update(y, y_pred)
        mae_w.update(y, y_pred)
    assert _figures(live, "price", "price-000001")["metrics"] == pytest.approx(
        {"mae": mae_w.get(), "mae_total": mae.get()}
    )


def test_multiclass_scores_are_read_by_class_name() -> None:
    live = LiveMetrics(_models())
    ce, acc = metrics.CrossEntropy(), metrics.Accuracy()
    pairs = [(3, 3, {"3": 0.7, "1": 0.3}), (1.0, 3, {"3": 0.6, "1": 0.4}), (1, 1, {"1": 0.9})]
    for label, pred, scores in pairs:
        live.update(example("topic", "topic-000001", label, pred, scores))
        y = int(label)  # 1.0 is class 1, as the trainer learns it
        ce.update(y, {int(k): p for k, p in scores.items()})
        acc.update(y, pred)
    got = _figures(live, "topic", "topic-000001")["metrics"]
    assert got["cross_entropy_total"] == pytest.approx(ce.get())
    assert got["accuracy_total"] == pytest.approx(acc.get())


def test_routes_are_kept_apart() -> None:
    live = LiveMetrics(_models())
    live.update(example("fraud", "fraud-000002", "fraud", True, route="canary"))
    live.update(example("fraud", "fraud-000002", "fraud", False, route="live"))
    live.update(example("fraud", "fraud-000002", "ok", False, route="live"))
    live.update(example("fraud", "fraud-000002", "ok", False, route=None))
    routes = live.snapshot()["fraud"]["fraud-000002"]["routes"]
    assert sorted(routes) == ["canary", "live", NO_ROUTE]
    assert routes["canary"]["n"] == 1
    assert routes["canary"]["metrics"]["accuracy_total"] == 1.0
    assert routes["live"]["n"] == 2
    assert routes["live"]["metrics"]["accuracy_total"] == 0.5


def shadow_score(
    model: str,
    version: str,
    label: Any,
    prediction: Any,
    scores: Mapping[str, float] | None = None,
    *,
    live: tuple[str, Any] = ("fraud-000001", False),
    ts: int = 2_000,
) -> ShadowScore:
    n = next(_ids)
    rid, sid = f"r{n}", f"s{n}"
    return ShadowScore.new(
        event_id=shadow_score_id(rid, sid),
        ts=ts,
        request_id=rid,
        example_id=training_example_id(rid, f"f{n}"),
        model=model,
        model_version=version,
        shadow_event_id=sid,
        prediction=prediction,
        scores=dict(scores) if scores is not None else None,
        label=label,
        live_version=live[0],
        live_route="live",
        live_event_id=f"i{n}",
        live_ts=ts - 100,
        live_prediction=live[1],
    )


def test_shadow_scores_are_scored_under_the_shadow_route_of_the_shadow_version() -> None:
    live = LiveMetrics(_models())
    live.update(example("fraud", "fraud-000001", "fraud", False))  # live traffic, as before
    live.update_shadow(shadow_score("fraud", "fraud-000002", "fraud", True, {"true": 0.8}))
    live.update_shadow(shadow_score("fraud", "fraud-000002", "ok", True, {"true": 0.6}))
    live.update_shadow(shadow_score("price", "price-000002", "heavy", 1.0))  # not a label
    live.update_shadow(shadow_score("nobody", "v", 1, 1))
    shadow = _figures(live, "fraud", "fraud-000002", SHADOW_ROUTE)
    assert (shadow["n"], shadow["defaults"], shadow["last_ts"]) == (2, 0, 2_000)
    assert _figures(live, "price", "price-000002", SHADOW_ROUTE)["invalid"] == 1
    assert shadow["metrics"]["accuracy_total"] == 0.5
    loss = metrics.LogLoss()
    loss.update(True, {True: 0.8, False: 0.0})
    loss.update(False, {True: 0.6, False: 0.0})
    assert shadow["metrics"]["log_loss_total"] == pytest.approx(loss.get())
    # the process-wide figures take the live route from the examples alone
    assert _figures(live, "fraud", "fraud-000001")["n"] == 1
    assert live.ignored == {"nobody": 1}
    text = live.prometheus_text()
    assert (
        'driftloop_live_examples_total{model="fraud",version="fraud-000002",route="shadow",'
        'outcome="scored"} 2' in text
    )


def test_a_shadow_score_with_live_scores_both_answers_on_the_same_request() -> None:
    paired = LiveMetrics(_models())
    for label, shadow_says, live_says in (("fraud", True, False), ("ok", False, False)):
        event = shadow_score(
            "fraud", "fraud-000002", label, shadow_says, live=("fraud-1", live_says)
        )
        paired.update_shadow(event, with_live=True)
    assert _figures(paired, "fraud", "fraud-000002", SHADOW_ROUTE)["metrics"]["accuracy"] == 1.0
    assert _figures(paired, "fraud", "fraud-1", "live")["metrics"]["accuracy"] == 0.5


def test_unscored_default_and_invalid_examples_are_counted_not_scored() -> None:
    live = LiveMetrics(_models())
    live.update(example("fraud", "fraud-000001", "fraud", True, ts=5))
    live.update(example("fraud", "fraud-000001", "fraud", None, ts=9))  # from before the joiner
    live.update(example("fraud", "fraud-000001", "ok", True, default=True, ts=7))
    live.update(example("price", "price-000001", 2.0, "not a number"))
    live.update(example("price", "price-000001", "heavy", 1.0))  # not a regression label
    fraud = _figures(live, "fraud", "fraud-000001")
    assert (fraud["n"], fraud["unscored"], fraud["defaults"]) == (1, 1, 1)
    assert (fraud["first_ts"], fraud["last_ts"]) == (5, 9)
    # the default label ("ok" against a True answer) would have been wrong: it is not scored
    assert fraud["metrics"]["accuracy_total"] == 1.0
    assert fraud["without_scores"] == 1  # scored on accuracy, no scores for log_loss
    assert "log_loss_total" not in fraud["metrics"]
    price = _figures(live, "price", "price-000001")
    assert (price["n"], price["invalid"]) == (0, 2)
    assert price["metrics"] == {}


def test_unknown_model_is_ignored_and_counted() -> None:
    live = LiveMetrics(_models())
    live.update(example("nobody", "nobody-000001", 1, 1))
    live.update(example("nobody", "nobody-000001", 1, 1))
    assert live.ignored == {"nobody": 2}
    assert "nobody" not in live.snapshot()
    assert 'driftloop_live_ignored_total{model="nobody"} 2' in live.prometheus_text()


def test_least_recently_updated_version_is_dropped_past_max_versions() -> None:
    live = LiveMetrics(_models(), max_versions=2)
    for v in ("price-000001", "price-000002", "price-000001", "price-000003"):
        live.update(example("price", v, 1.0, 1.0))
    assert sorted(live.snapshot()["price"]) == ["price-000001", "price-000003"]


def test_snapshot_is_json_and_round_trips() -> None:
    live = LiveMetrics(_models(), clock=lambda: 12.5)
    live.update(example("fraud", "fraud-000001", "fraud", True, {"true": 0.8, "false": 0.2}))
    live.update(example("price", "price-000001", 1.0, 3.0, route="canary"))
    snap = live.snapshot()
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert snap["topic"] == {}
    assert _figures(live, "fraud", "fraud-000001")["since_ms"] == 12_500


def test_prometheus_text_has_metrics_and_counts_by_label() -> None:
    live = LiveMetrics(_models())
    live.update(example("price", "price-000001", 1.0, 3.0, route="canary", ts=77))
    live.update(example("price", "price-000001", 1.0, None, route="canary"))
    lines = live.prometheus_text().splitlines()
    base = 'model="price",version="price-000001",route="canary"'
    assert "# TYPE driftloop_live_metric gauge" in lines
    assert f'driftloop_live_metric{{{base},metric="mae",span="window"}} 2.0' in lines
    assert f'driftloop_live_metric{{{base},metric="mae",span="total"}} 2.0' in lines
    assert f'driftloop_live_examples_total{{{base},outcome="scored"}} 1' in lines
    assert f'driftloop_live_examples_total{{{base},outcome="unscored"}} 1' in lines
    assert f"driftloop_live_last_example_ts_ms{{{base}}} 1000" in lines
    assert LiveMetrics({}).prometheus_text() == ""


def test_torch_labels_convert_like_the_torch_adapter() -> None:
    (config,) = load_config(EXAMPLES / "torch_fm.toml").models
    rule, adapter = label_rule(config), build_predictor(config)
    assert rule.task == adapter.task
    for label in (True, False, 0, 1, 1.0, "yes", "No", "true"):
        e = example(config.name, "v1", label, True)
        assert rule.target(e) == adapter.target(e)


class HashTwin:
    """The two Redis hash calls the store uses, in memory; can be made to fail."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.writes = 0
        self.down = False

    def hset(self, name: str, *, mapping: Mapping[str, str]) -> int:
        if self.down:
            raise redis.ConnectionError("redis is down")
        self.writes += 1
        self.hashes.setdefault(name, {}).update(mapping)
        return len(mapping)

    def hgetall(self, name: str) -> dict[str, str]:
        return dict(self.hashes.get(name, {}))


def test_store_writes_changed_versions_at_most_every_interval() -> None:
    live = LiveMetrics(_models())
    twin = HashTwin()
    store = LiveMetricsStore(live, twin, key_prefix="dl:", every_s=10.0)
    live.update(example("price", "price-000001", 1.0, 3.0))
    assert store.publish(100.0) == 1
    live.update(example("price", "price-000001", 1.0, 2.0))
    assert store.publish(105.0) == 0  # too soon
    assert store.publish(110.0) == 1
    assert store.publish(120.0) == 0  # nothing changed
    live.update(example("price", "price-000002", 1.0, 1.0))
    assert store.publish(121.0, force=True) == 1  # only the changed version
    assert twin.writes == 3
    got = read_live_metrics(twin, "dl:", "price")
    assert sorted(got) == ["price-000001", "price-000002"]
    assert got["price-000001"]["updated_ms"] == 110_000
    assert got["price-000002"]["updated_ms"] == 121_000
    snap = live.snapshot()["price"]
    for version, figures in got.items():
        assert {k: v for k, v in figures.items() if k != "updated_ms"} == snap[version]
    assert metrics_key("dl:", "price") in twin.hashes


def test_store_failure_is_counted_and_retried() -> None:
    live = LiveMetrics(_models())
    twin = HashTwin()
    store = LiveMetricsStore(live, twin, key_prefix="dl:", every_s=0.0)
    live.update(example("price", "price-000001", 1.0, 3.0))
    twin.down = True
    assert store.publish(1.0) == 0
    assert store.failures == 1
    twin.down = False
    assert store.publish(2.0) == 1
    assert read_live_metrics(twin, "dl:", "price")["price-000001"]["routes"]["live"]["n"] == 1


def test_reader_shows_a_damaged_field_instead_of_failing() -> None:
    twin = HashTwin()
    twin.hashes["dl:m:metrics"] = {"v1": "{not json", "v2": "[1]"}
    got = read_live_metrics(twin, "dl:", "m")
    assert set(got) == {"v1", "v2"}
    assert all("error" in f for f in got.values())
    assert read_live_metrics(twin, "dl:", "other") == {}
