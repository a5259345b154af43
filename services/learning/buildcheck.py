"""A dry build of a model configuration: every error it holds, before any work starts.

Loading a configuration (:func:`services.learning.config.load_config`)
already resolves every factory path and checks every value. What only
building finds (a constructor refusing its parameters, a river factory that
builds neither a classifier nor a regressor, a torch optimizer that refuses
the module's parameters, a DDM-family detector on a regression model) is
found by :func:`check_buildable`: it builds the trainer of each model once,
with its model, optimizer, metrics, drift detectors and triggers, feeds each
detector two values, and throws it all away.

The worker calls it before it creates topics or joins the consumer group,
and the trainer calls it on a SIGHUP reload before applying anything, so a
refused reload keeps the running configuration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from schemas.errors import ConfigError
from services.learning.config import ModelConfig
from services.learning.sink import InMemorySink
from services.learning.trainer import OnlineTrainer

_STOP = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def check_buildable(models: Iterable[ModelConfig]) -> None:
    """Build each model's trainer once (throwaway); raise on the first that fails.

    Raises
    ------
    ConfigError
        Naming the model; whatever the build raised (a pyo3 panic included)
        is the cause. ``KeyboardInterrupt``, ``SystemExit`` and cancellation
        propagate.
    """
    for config in models:
        try:
            trainer = OnlineTrainer(config, InMemorySink())
            for detector in trainer.drift.detectors:
                detector.update(0.0)
                detector.update(1.0)
        except ConfigError as exc:
            context = {**exc.context, "model": config.name}
            raise ConfigError(exc.message, **context) from exc
        except _STOP:
            raise
        except BaseException as exc:  # anything model code raises, pyo3 panics too
            raise ConfigError(
                f"model does not build: {type(exc).__name__}: {exc}", model=config.name
            ) from exc
