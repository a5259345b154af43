"""Tagged JSON for nested state that mixes tensors with plain values.

Optimizer and LR-scheduler ``state_dict()`` values hold tensors, tuples,
integer keys and sometimes non-finite floats; none of these survive plain
JSON. :func:`split_tensors` walks such a value, moves every tensor into a
flat ``{name: tensor}`` mapping (stored as safetensors) and returns a JSON
document where each is replaced by ``{"__tensor__": name}``; tuples become
``{"__tuple__": [...]}``, dicts with non-string keys ``{"__items__": [[k, v], ...]}``
and non-finite floats ``{"__float__": "nan"}``. :func:`join_tensors` is the
exact inverse, so ``optimizer.load_state_dict`` receives what
``optimizer.state_dict`` gave, types included. Anything else (a function, an
arbitrary object) is refused: it would need pickle.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from schemas.errors import CheckpointError

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)

_TAGS = ("__tensor__", "__tuple__", "__items__", "__float__")


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Return a JSON-able copy of ``value``, moving tensors into ``tensors`` by dotted path.

    Raises
    ------
    CheckpointError
        When ``value`` holds something that has no JSON form (``path`` says where).
    """
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach()
        return {"__tensor__": path}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {
            "__tuple__": [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
        }
    if isinstance(value, list):
        return [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _TAGS for k in value):
            return {
                k: split_tensors(v, tensors, f"{path}.{k}" if path else k) for k, v in value.items()
            }
        items = []
        for k, v in value.items():
            if not isinstance(k, str | int | bool) and k is not None:
                raise CheckpointError("state key has no JSON form", path=path, key=repr(k))
            items.append([k, split_tensors(v, tensors, f"{path}.{k}" if path else str(k))])
        return {"__items__": items}
    raise CheckpointError(
        "state value has no JSON form (only tensors, numbers, strings, lists, tuples and dicts)",
        path=path or "<root>",
        type=type(value).__qualname__,
    )


def join_tensors(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`: rebuild the value, taking tensors from ``tensors``.

    Raises
    ------
    CheckpointError
        When the document names a tensor that ``tensors`` lacks.
    """
    if isinstance(doc, list):
        return [join_tensors(v, tensors) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if len(doc) == 1:
        ((tag, inner),) = doc.items()
        if tag == "__tensor__":
            if inner not in tensors:
                raise CheckpointError("document names a tensor that is not stored", tensor=inner)
            return tensors[inner]
        if tag == "__tuple__":
            return tuple(join_tensors(v, tensors) for v in inner)
        if tag == "__items__":
            return {k: join_tensors(v, tensors) for k, v in inner}
        if tag == "__float__":
            return float(inner)
    return {k: join_tensors(v, tensors) for k, v in doc.items()}
