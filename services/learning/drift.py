"""Drift detectors from ``river.drift``, chosen per model, fed the error or the loss.

What each detector is fed (per example, in scoring order):

- ``input = "error"``: classification: 1.0 for a wrong prediction, 0.0 for a
  right one; regression: the absolute error.
- ``input = "loss"``: the per-example loss (log loss of the true class for
  classifiers, absolute error for regressors).

ADWIN, PageHinkley and KSWIN take any real value. The DDM family (DDM, EDDM,
HDDM_A, HDDM_W, FHDDM) models a Bernoulli error rate and takes 1 = error, so
it is accepted only for classification with ``input = "error"``.

river 0.26: ``update()`` returns None; :class:`DriftMonitor` reads
``drift_detected`` after each update. KSWIN samples at random: it is seeded
with the model seed unless its params name one, so replays are deterministic.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from river import drift
from river.drift import binary

from schemas.errors import ConfigError
from services.learning.adapters import Score
from services.learning.config import DetectorConfig
from services.learning.factory import call

_REAL: dict[str, Any] = {
    "ADWIN": drift.ADWIN,
    "PageHinkley": drift.PageHinkley,
    "KSWIN": drift.KSWIN,
}
_BINARY: dict[str, Any] = {
    "DDM": binary.DDM,
    "EDDM": binary.EDDM,
    "HDDM_A": binary.HDDMA,
    "HDDM_W": binary.HDDMW,
    "FHDDM": binary.FHDDM,
}


def build_detector(config: DetectorConfig, *, task: str, seed: int, model: str = "") -> Any:
    """A fresh river detector for ``config``.

    Raises
    ------
    ConfigError
        A DDM-family detector on regression or fed the loss; parameters the
        detector refuses (whatever it raises, a pyo3 panic included). The
        bounds of :mod:`services.learning.detector_params` were checked when
        the config loaded.
    """
    if config.kind in _BINARY:
        if task != "classification" or config.input != "error":
            raise ConfigError(
                f"{config.kind} takes 1 = error: use it with classification and input='error'",
                model=model or None,
            )
        factory: Any = _BINARY[config.kind]
    else:
        factory = _REAL[config.kind]
    params = dict(config.params)
    if "seed" in inspect.signature(factory).parameters:
        params.setdefault("seed", seed)
    try:
        return call(factory, config.kind, **params)
    except ConfigError as exc:
        raise ConfigError(f"{config.kind}: {exc.message}", model=model or None) from exc


class DriftMonitor:
    """The detectors of one model, updated from scores, with a detection log.

    Parameters
    ----------
    configs
        Detector configurations, in order; each is named ``"{index}:{kind}"``.
    task
        ``"classification"`` or ``"regression"``.
    seed
        Seed for detectors that sample (KSWIN).
    """

    def __init__(
        self, configs: Sequence[DetectorConfig], *, task: str, seed: int, model: str = ""
    ) -> None:
        self.configs = tuple(configs)
        self.detectors = [build_detector(c, task=task, seed=seed, model=model) for c in configs]
        self.names = [f"{i}:{c.kind}" for i, c in enumerate(self.configs)]
        self.detections: dict[str, int] = dict.fromkeys(self.names, 0)
        self.improvements: dict[str, int] = dict.fromkeys(self.names, 0)
        self.last_detection: dict[str, int] = {}

    def update(self, score: Score, position: int) -> list[str]:
        """Feed one score (the ``position``-th example); names of detectors that fired."""
        fired = []
        for name, config, detector in zip(self.names, self.configs, self.detectors, strict=True):
            watch_increase = config.direction == "increase" and config.kind == "ADWIN"
            before = detector.estimation if watch_increase else 0.0
            detector.update(score.error if config.input == "error" else score.loss)
            if not detector.drift_detected:
                continue
            if watch_increase and detector.estimation <= before:
                # ADWIN dropped the older part of its window because the mean
                # fell: the model got better, it did not drift.
                self.improvements[name] += 1
                continue
            self.detections[name] += 1
            self.last_detection[name] = position
            fired.append(name)
        return fired

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for metrics and the manifest's ``extra``."""
        return {
            name: {
                "input": config.input,
                "detections": self.detections[name],
                "improvements": self.improvements.get(name, 0),
                "last_detection": self.last_detection.get(name),
            }
            for name, config in zip(self.names, self.configs, strict=True)
        }

    def objects(self) -> dict[str, Any]:
        """Detector objects and counters, for the checkpoint (river pickles)."""
        return {
            "detectors": list(self.detectors),
            "detections": dict(self.detections),
            "improvements": dict(self.improvements),
            "last_detection": dict(self.last_detection),
        }

    def restore(self, objects: dict[str, Any]) -> None:
        """Take back the state of :meth:`objects`; the detector list must match."""
        detectors = list(objects["detectors"])
        if len(detectors) != len(self.detectors):
            raise ConfigError("checkpointed drift detectors do not match the config")
        self.detectors = detectors
        self.detections = dict(objects["detections"])
        self.improvements = dict(objects.get("improvements", dict.fromkeys(self.names, 0)))
        self.last_detection = dict(objects["last_detection"])
