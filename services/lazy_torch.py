"""``torch``, imported when first used rather than when a module is imported.

Importing torch takes longer than everything else a worker imports together
(measured with ``python -X importtime``), and a worker whose models are all
river models never uses it: the modules that serve both kinds (the checkpoint
state layer, the learning adapters) import it as::

    if TYPE_CHECKING:
        import torch
    else:
        from services.lazy_torch import torch

and the first attribute read (``torch.Tensor``, ``torch.save``, ...) imports
the real module. Code that runs at import time must not read one.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A module object that imports the module named ``name`` on first attribute
    access and then holds its attributes (later reads are plain lookups)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._lazy_name)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def loaded(name: str = "torch") -> bool:
    """Whether ``name`` has been imported in this process (by anyone)."""
    return name in sys.modules


def one_intra_op_thread() -> None:
    """Give torch one intra-op thread, process-wide (imports torch if nobody has)."""
    import torch as real

    real.set_num_threads(1)


torch = LazyModule("torch")
