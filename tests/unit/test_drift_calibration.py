"""The shipped examples' drift detectors mean drift: few false alarms on
stationary streams, a concept change caught quickly (issue 12, item 5).

Each run is the in-memory trainer on 10,000 examples of a river stream, with
the example config exactly as shipped (its 10% holdout included: the
detectors see the 90% of examples that are learned, as a user's do); a
"drift checkpoint" is a checkpoint whose trigger is ``drift``, and positions
are positions in the stream, held-out examples included (as
``benchmarks.train`` prints them).
"""

from __future__ import annotations

import pytest

from services.learning.config import example_path, load_config
from services.learning.sink import InMemorySink
from services.learning.synthetic import drift_scenario, examples_from
from services.learning.trainer import OnlineTrainer

MODELS = [("river_logreg", "river-logreg"), ("torch_fm", "torch-fm")]
SEEDS = (1, 2, 3)
CHANGE_AT = 5_000
MAX_DELAY = 500

pytestmark = pytest.mark.slow


def drift_checkpoints(example: str, model: str, scenario: str, seed: int) -> list[int]:
    """Example positions at which the trainer took a drift checkpoint."""
    trainer = OnlineTrainer(load_config(example_path(example)).model(model), InMemorySink())
    stream = drift_scenario(scenario, seed, change_at=CHANGE_AT)
    at: list[int] = []
    for i, example_ in enumerate(examples_from(stream, model)):
        outcome = trainer.process(example_, topic="t", partition=0, offset=i)
        at.extend(i for record in outcome.checkpoints if record.trigger == "drift")
    return at


@pytest.mark.parametrize(("example", "model"), MODELS)
@pytest.mark.parametrize("scenario", ["agrawal", "sea"])
def test_at_most_one_drift_checkpoint_per_10k_stationary_examples(
    example: str, model: str, scenario: str
) -> None:
    alarms = {seed: drift_checkpoints(example, model, scenario, seed) for seed in SEEDS}
    assert all(len(at) <= 1 for at in alarms.values()), alarms


def caught(example: str, model: str, scenario: str) -> dict[int, list[int]]:
    return {seed: drift_checkpoints(example, model, scenario, seed) for seed in SEEDS}


def delays(alarms: dict[int, list[int]]) -> dict[int, int | None]:
    return {
        seed: next((a - CHANGE_AT for a in at if a >= CHANGE_AT), None)
        for seed, at in alarms.items()
    }


@pytest.mark.parametrize(("example", "model"), MODELS)
def test_the_demos_label_inversion_is_caught_within_500_examples(example: str, model: str) -> None:
    alarms = caught(example, model, "sea-inverted")
    found = delays(alarms)
    assert all(d is not None and d <= MAX_DELAY for d in found.values()), found
    assert all(sum(a < CHANGE_AT for a in at) <= 1 for at in alarms.values()), alarms


def test_river_example_catches_sea_0_to_3_within_500_examples() -> None:
    alarms = caught("river_logreg", "river-logreg", "sea-0-to-3")
    found = delays(alarms)
    assert all(d is not None and d <= MAX_DELAY for d in found.values()), found
    assert all(sum(a < CHANGE_AT for a in at) <= 1 for at in alarms.values()), alarms


@pytest.mark.xfail(
    strict=True,
    reason="the torch FM's own error on SEA (11-13% in the 1,000 examples before the change) is "
    "as large as the change SEA 0 -> 3 makes (about 13% of inputs change class, most near the "
    "old boundary it already gets wrong): over the 500 examples after it its error rose to "
    "13-15%; no detector setting tried caught it within 500 examples without false alarms on "
    "Agrawal (ADWIN on the error, delta 0.002-0.2, clock 4 or 8; on the loss, 0.002-0.05)",
)
def test_torch_example_catches_sea_0_to_3_within_500_examples() -> None:
    found = delays(caught("torch_fm", "torch-fm", "sea-0-to-3"))
    assert all(d is not None and d <= MAX_DELAY for d in found.values()), found
