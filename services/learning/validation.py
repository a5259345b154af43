"""Per-example validation: is this example something the model can learn from?

The trainer validates every example when it arrives, *before* it enters the
micro-batch, so that a batch is never half-learned because its fifth example
makes ``learn_one`` raise. What an adapter accepts:

==========================  ====================================================
model                       accepted
==========================  ====================================================
river binary classifier     label: bool, 0 / 1, ``"true"/"false"/"yes"/"no"/
(``LogisticRegression``,    "1"/"0"``, or anything when ``positive_label`` is
``Perceptron``, ...)        set (``label == positive_label``); learned as bool.
river multiclass            label: any class (bool, int, str; integral floats
classifier                  become ints). A new class is a new class.
regression (both kinds)     label: a finite number (bools 1.0 / 0.0, numeric
                            strings parsed).
torch classification        label: as for river binary classifiers.
river, numeric features     feature values: finite real numbers or bools. The
(``feature_values =         default (``"auto"``) for models with a step from
"numeric"``, or ``"auto"``  ``river.linear_model`` or ``river.preprocessing``
on linear models/scalers)   scalers: ``VectorDict`` and scalers take no strings.
river, other models         feature values: finite numbers, bools, strings
(``"any"``)                 (trees and naive Bayes take strings as categories).
torch                       feature values: finite numbers, bools, strings (a
                            string is a hashed one-hot ``name=value``).
==========================  ====================================================

A refusal is a :class:`~schemas.errors.SchemaError` whose ``field`` is
``label`` or ``features.<name>``; the trainer turns it into a dead letter of
kind ``validation``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from schemas.errors import SchemaError

_NUMERIC_MODULES = ("river.linear_model", "river.preprocessing.scale")


def river_steps(model: Any) -> list[Any]:
    """The estimators inside a river model: the steps of a pipeline (nested
    pipelines flattened), or the model itself."""
    steps = getattr(model, "steps", None)
    if isinstance(steps, Mapping):
        out: list[Any] = []
        for step in steps.values():
            out.extend(river_steps(step))
        return out
    return [model]


def needs_numeric_features(model: Any, setting: str) -> bool:
    """Whether a river model takes only numeric feature values.

    ``setting`` is the model's ``feature_values``: ``numeric`` / ``any`` decide;
    ``auto`` says numeric when any step comes from ``river.linear_model`` or is a
    ``river.preprocessing`` scaler (their arithmetic refuses strings).
    """
    if setting != "auto":
        return setting == "numeric"
    return any(type(s).__module__.startswith(_NUMERIC_MODULES) for s in river_steps(model))


def check_features(
    features: Mapping[str, Any], *, numeric_only: bool, model: str | None = None
) -> None:
    """Raise SchemaError (``field="features.<name>"``) for a value the model cannot take.

    Numbers must be finite (a NaN learned once poisons a linear model for good);
    strings only when ``numeric_only`` is false; nothing else.
    """
    for name, value in features.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise SchemaError(
                    f"feature value {value!r} is not finite", field=f"features.{name}", model=model
                )
            continue
        if isinstance(value, str) and not numeric_only:
            continue
        what = "a real number" if numeric_only else "a finite number, bool or string"
        raise SchemaError(
            f"feature value {value!r} is not {what} (feature_values of this model)",
            field=f"features.{name}",
            model=model,
        )
