"""Label handling: what a feedback label (bool | number | str) means to a model.

=================  ==============================================================
task / kind        label -> what the model learns and the metrics compare
=================  ==============================================================
classification,    multiclass river classifiers: the label as given (``True``,
river              ``"spam"``, ``3``); integral floats become ints (``1.0`` ->
                   ``1``) so JSON round trips do not split a class in two.
                   Binary river classifiers (``LogisticRegression``...): as
                   for torch below.
classification,    binary: a bool. ``positive_label`` set: ``label ==
torch              positive_label``. Otherwise bools as given, numbers 0 / 1,
                   strings ``"true"/"1"/"yes"`` and ``"false"/"0"/"no"`` (any
                   case); anything else is a SchemaError.
regression         a float: numbers as given, bools 1.0 / 0.0, numeric strings
                   parsed; anything else is a SchemaError.
=================  ==============================================================
"""

from __future__ import annotations

import math

from schemas.errors import SchemaError

Label = bool | int | float | str

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def class_label(label: Label) -> Label:
    """The class a river classifier learns for ``label``.

    >>> class_label(1.0), class_label("spam"), class_label(True)
    (1, 'spam', True)
    """
    if isinstance(label, float) and label.is_integer():
        return int(label)
    return label


def binary_target(label: Label, *, positive_label: Label | None = None, model: str = "") -> bool:
    """The binary target (True = positive) of ``label``.

    >>> binary_target("YES"), binary_target(0), binary_target("fraud", positive_label="fraud")
    (True, False, True)
    """
    if positive_label is not None:
        return class_label(label) == class_label(positive_label)
    if isinstance(label, bool):
        return label
    if isinstance(label, int | float):
        if label in (0, 1):
            return bool(label)
    elif label.strip().lower() in _TRUE | _FALSE:
        return label.strip().lower() in _TRUE
    raise SchemaError(
        f"label {label!r} is not binary; set positive_label for this model",
        field="label",
        model=model or None,
    )


def regression_target(label: Label, *, model: str = "") -> float:
    """The float target of ``label`` for a regressor.

    >>> regression_target(True), regression_target("2.5"), regression_target(3)
    (1.0, 2.5, 3.0)
    """
    try:
        value = float(label)
    except ValueError:
        raise SchemaError(
            f"label {label!r} is not a number", field="label", model=model or None
        ) from None
    if not math.isfinite(value):
        raise SchemaError(f"label {label!r} is not finite", field="label", model=model or None)
    return value
