"""Drift detectors and the synthetic concept-drift check through the trainer."""

from __future__ import annotations

import pytest
from river.datasets import synth

from schemas.errors import ConfigError
from services.learning.adapters import Score
from services.learning.config import DetectorConfig, parse_config
from services.learning.drift import DriftMonitor, build_detector
from services.learning.sink import InMemorySink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer

DRIFT_AT = 3000


@pytest.mark.parametrize("kind", ["DDM", "EDDM", "HDDM_A", "HDDM_W", "FHDDM"])
def test_ddm_family_is_refused_for_loss_input_and_regression(kind: str) -> None:
    with pytest.raises(ConfigError, match="1 = error"):
        build_detector(DetectorConfig(kind=kind, input="loss"), task="classification", seed=0)
    with pytest.raises(ConfigError, match="1 = error"):
        build_detector(DetectorConfig(kind=kind), task="regression", seed=0)


def test_monitor_detects_a_jump_in_error_rate_and_logs_it() -> None:
    monitor = DriftMonitor(
        [DetectorConfig(kind="ADWIN"), DetectorConfig(kind="DDM")], task="classification", seed=0
    )
    right = Score(True, True, {True: 0.9, False: 0.1}, 0.1, 0.0)
    wrong = Score(True, False, {True: 0.1, False: 0.9}, 2.3, 1.0)
    fired: list[str] = []
    for i in range(2000):
        fired += monitor.update(right if i < 1000 or i % 2 else wrong, i)
    assert set(fired) == {"0:ADWIN", "1:DDM"}
    assert all(1000 <= pos < 1300 for pos in monitor.last_detection.values())
    assert monitor.summary()["0:ADWIN"]["input"] == "error"


def test_kswin_is_seeded_so_replays_agree() -> None:
    a = build_detector(DetectorConfig(kind="KSWIN"), task="regression", seed=3)
    b = build_detector(DetectorConfig(kind="KSWIN"), task="regression", seed=3)
    hits = []
    for det in (a, b):
        seen = []
        for i in range(600):
            det.update(float(i >= 300) + (i % 7) * 0.01)
            seen.append(det.drift_detected)
        hits.append(seen)
    assert hits[0] == hits[1]
    assert any(hits[0])


def test_concept_drift_gives_a_drift_checkpoint_soon_after_and_counts_on_schedule() -> None:
    config = parse_config(
        {
            "model": [
                {
                    "name": "sea",
                    "kind": "river",
                    "seed": 1,
                    "factory": {"path": "river.tree.HoeffdingTreeClassifier"},
                    "batch_size": 20,
                    "triggers": {"every_n": 1000, "adaptive": {"min_every_n": 200}},
                    "drift": [{"kind": "ADWIN"}, {"kind": "DDM"}],
                    # every example learned: the positions below are stream positions
                    "promotion": {"holdout_percent": 0},
                }
            ]
        }
    ).model("sea")
    stream = synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, seed=1),
        drift_stream=synth.SEA(variant=3, seed=2),
        position=DRIFT_AT,
        width=50,
        seed=3,
    )
    sink = InMemorySink()
    trainer = OnlineTrainer(config, sink)
    for i, ex in enumerate(examples_from(stream, "sea", limit=5000)):
        trainer.process(ex, topic="training-examples", partition=0, offset=i)
    cps = [(c.trigger, c.examples_seen, c.schedule["interval"]) for c in trainer.checkpoints]
    before = [c for c in cps if c[1] <= DRIFT_AT]
    # Feedback-count checkpoints on schedule before the drift, and no false drift.
    assert before == [("count", 1000, 1000), ("count", 2000, 1000), ("count", 3000, 1000)]
    drift_cps = [c for c in cps if c[0] == "drift"]
    assert drift_cps, cps
    assert DRIFT_AT < drift_cps[0][1] <= DRIFT_AT + 500
    # Right after the drift the count interval shrank, and it relaxed again later.
    after = [c for c in cps if c[1] > drift_cps[0][1]]
    assert after[0][2] < 1000
    assert max(c[2] for c in after) > after[0][2]
    assert sink.triggers() == [c[0] for c in cps]


@pytest.mark.parametrize(("direction", "fires"), [("increase", False), ("any", True)])
def test_adwin_counts_a_falling_error_as_improvement_not_drift(direction: str, fires: bool) -> None:
    right = Score(True, True, {True: 0.9, False: 0.1}, 0.1, 0.0)
    wrong = Score(True, False, {True: 0.1, False: 0.9}, 2.3, 1.0)
    config = DetectorConfig(kind="ADWIN", input="error", direction=direction)  # type: ignore[arg-type]
    monitor = DriftMonitor([config], task="classification", seed=0)
    # A model that is learning: mostly wrong, then mostly right.
    scores = [wrong] * 300 + [right] * 600
    fired = [i for i, s in enumerate(scores) if monitor.update(s, i)]
    assert bool(fired) is fires
    if not fires:
        assert monitor.summary()["0:ADWIN"]["improvements"] >= 1
    # Whatever the direction, a rising error is drift.
    later = [wrong] * 400
    assert any(monitor.update(s, 900 + i) for i, s in enumerate(later))
