"""Finite-weight checks of a loaded model (the gateway's ``finite_weights`` check).

:func:`nonfinite_weight` describes the first non-finite weight of an adapter
restored from a checkpoint, or returns None when every weight it looks at is
finite. A NaN or an infinity in a weight makes every later prediction
meaningless, so such a version is never promoted, whatever it scores.

Torch (:func:`torch_problem`): every parameter and every buffer of the module
(``named_parameters()``, ``named_buffers()``), each tensor in full:
``torch.isfinite(t).all()``. Integer and bool tensors are finite by
construction.

River (:func:`river_problem`): the object graph of the model, walked from the
model object iteratively (no recursion), each object once (shared and cyclic
references are visited once). Nothing of the model is called: the walk reads
an instance's ``__dict__`` and the member slots of its class's ``__slots__``,
never a property, and calls no method except ``VectorDict.to_dict()`` on
river's Rust-backed ``VectorDict`` (its values are not reachable otherwise)
and, for the message only, the ``repr`` of the dict keys on the path to a
non-finite value.
What is checked:

=============================================  =========================================
reached                                        checked
=============================================  =========================================
``float`` (numpy floating scalars too)         finite: NaN, ``inf`` and ``-inf`` fail
``complex`` and numpy complex scalars          both parts finite
numpy array, floating or complex dtype         ``numpy.isfinite`` over every element
numpy array of objects                         each element walked
``dict`` (``OrderedDict``, ``defaultdict``,    each value walked (keys are feature names
``Counter``), river ``VectorDict``             and classes, not weights: not looked at)
``list``, ``tuple``, ``set``, ``deque``        each item walked
any other object                               the values of its ``__dict__`` and slots
=============================================  =========================================

Not looked into: ``int``, ``bool``, ``str``, ``bytes``, ``None``; classes,
functions, methods and modules; objects with neither a ``__dict__`` nor
slots (numpy ``RandomState``, river's Rust-backed ``ADWIN`` window): they
hold no model weight.

Every number reachable counts, not only the coefficients: a scaler's means
and variances, a tree's split thresholds and leaf statistics, the optimizer's
accumulators and hyperparameters. None of the estimators the checkpoint
allow-list was generated from (:mod:`services.checkpoints.state.allowlist_gen`:
linear models, Hoeffding trees, naive Bayes, scalers, encoders, pipelines)
holds a non-finite number, fresh or trained
(``tests/unit/test_validation_evaluate.py`` walks them all), so a value this
check reports is not one river put there by design.

The walk is bounded: deeper than ``max_depth`` containers below the model,
or more than ``max_items`` values and objects visited, and it stops with a
problem that says so (an unchecked model is not reported as finite).
"""

from __future__ import annotations

import math
import types
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from services.learning.adapters import ModelAdapter

#: Defaults of :func:`river_problem`'s bounds (a LogisticRegression with a million
#: weights took about half a second to walk on the development machine).
MAX_DEPTH = 1_000
MAX_ITEMS = 10_000_000

_SKIPPED: tuple[type, ...] = (
    str,
    bytes,
    bytearray,
    int,
    type(None),
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
)


def nonfinite_weight(adapter: ModelAdapter) -> str | None:
    """The first non-finite weight of ``adapter``'s model, described; None if all are finite.

    Torch adapters: :func:`torch_problem` on the module; river adapters:
    :func:`river_problem` on the model (both documented in the module docstring).
    """
    objects = adapter.live_objects()
    if adapter.kind == "torch":
        module = objects["module"]
        if not isinstance(module, nn.Module):
            return f"the adapter's module is a {type(module).__name__}, not a torch module"
        return torch_problem(module)
    return river_problem(objects["model"])


def torch_problem(module: nn.Module) -> str | None:
    """The first parameter or buffer of ``module`` holding a non-finite value, described."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                bad = int((~finite).sum())
                first = tuple(int(i) for i in (~finite).nonzero()[0].tolist())
                value = tensor.detach()[first].item()
                return (
                    f"tensor {name} holds {bad} non-finite value(s) of {tensor.numel()}"
                    f" (first at {list(first)}: {value})"
                )
    return None


#: How a child is reached: ``(".", attribute name)`` or ``("[]", key or index)``.
_Step = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class _Node:
    """One object on the walk, with how it was reached (for the message)."""

    obj: Any
    depth: int
    parent: _Node | None
    step: _Step

    def path(self) -> str:
        """How the object is reached from the model: ``model.steps['scale'].means['x']``."""
        steps: list[str] = []
        node: _Node | None = self
        while node is not None:
            kind, key = node.step
            steps.append(f".{key}" if kind == "." else f"[{key!r}]" if kind == "[]" else key)
            node = node.parent
        return "".join(reversed(steps))


def _slot_names(cls: type) -> Iterator[str]:
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                yield name


def _members(obj: Any) -> Iterator[tuple[_Step, Any]]:
    """``(step, value)`` for every attribute of a non-container object, read without calls."""
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        for name, value in attrs.items():
            yield (".", name), value
    for name in _slot_names(type(obj)):
        try:
            value = object.__getattribute__(obj, name)
        except AttributeError:  # an empty slot
            continue
        yield (".", name), value


def _children(obj: Any) -> Iterator[tuple[_Step, Any]]:
    """``(step, value)`` for every child of ``obj``; a key is shown (repr) only in a message."""
    from river.utils import VectorDict

    if isinstance(obj, VectorDict):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return ((("[]", k), v) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset | deque):
        return ((("[]", i), v) for i, v in enumerate(obj))
    if isinstance(obj, np.ndarray):  # dtype object (numeric arrays are checked whole)
        return ((("[]", i), v) for i, v in enumerate(obj.ravel()))
    return _members(obj)


def _scalar_problem(value: Any) -> bool | None:
    """True for a non-finite number, False for a finite one, None for anything else."""
    if isinstance(value, float | np.floating):
        return not math.isfinite(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return not bool(np.isfinite(value).all())
    if isinstance(value, complex | np.complexfloating):
        return not (math.isfinite(value.real) and math.isfinite(value.imag))
    if isinstance(value, np.generic):  # numpy integer and bool scalars
        return False
    return None


def river_problem(
    model: Any, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS
) -> str | None:
    """The first non-finite number reachable in a river model, described with its path.

    See the module docstring for what is walked. Returns a problem too when the
    walk passes ``max_depth`` or ``max_items`` (the model could not be checked).
    """
    seen = {id(model)}
    stack = [_Node(model, 0, None, ("", "model"))]
    visited = 0
    while stack:
        node = stack.pop()
        for step, value in _children(node.obj):
            visited += 1
            if visited > max_items:
                return f"the model holds more than {max_items} values; not checked in full"
            bad = _scalar_problem(value)
            if bad is not None:
                if bad:
                    where = _Node(value, node.depth + 1, node, step).path()
                    shown = (
                        "array with non-finite values" if isinstance(value, np.ndarray) else value
                    )
                    return f"weight {where} is {shown}"
                continue
            if isinstance(value, _SKIPPED):
                continue
            if id(value) in seen:
                continue
            seen.add(id(value))
            if node.depth + 1 > max_depth:
                where = _Node(value, node.depth + 1, node, step).path()
                return f"the model nests deeper than {max_depth} objects (at {where}); not checked"
            stack.append(_Node(value, node.depth + 1, node, step))
    return None
