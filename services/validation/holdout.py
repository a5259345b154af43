"""The gateway's holdout buffer: the most recent held-out examples of one model.

Bounded (``size``); a request seen again (a duplicate delivery of its
example) replaces nothing and is not counted twice. ``added`` counts every
example ever accepted, so a judge can ask for the examples that came after
a point (:meth:`since`): the guard scores the live version and the one it
replaced only on examples that arrived after the promotion.
"""

from __future__ import annotations

from collections import OrderedDict

from services.validation.base import HoldoutExample


class HoldoutBuffer:
    """The ``size`` most recent held-out examples, oldest first.

    Examples
    --------
    >>> from services.validation.base import HoldoutExample
    >>> buf = HoldoutBuffer(2)
    >>> for i in range(3):
    ...     _ = buf.add(HoldoutExample(f"r{i}", {"x": 1.0}, True, 1.0, i, "v1"))
    >>> [e.request_id for e in buf.examples()], buf.added
    (['r1', 'r2'], 3)
    >>> [e.request_id for e in buf.since(2)]
    ['r2']
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a holdout buffer holds at least one example, not {size}")
        self.size = size
        self.added = 0
        self._items: OrderedDict[str, tuple[int, HoldoutExample]] = OrderedDict()

    def add(self, example: HoldoutExample) -> bool:
        """Keep ``example``; False (and nothing changes) when its request is held already."""
        if example.request_id in self._items:
            return False
        self._items[example.request_id] = (self.added, example)
        self.added += 1
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return True

    def examples(self) -> list[HoldoutExample]:
        """Every example held, oldest first."""
        return [example for _, example in self._items.values()]

    def since(self, mark: int) -> list[HoldoutExample]:
        """The examples held that were added at or after count ``mark`` (oldest first)."""
        return [example for index, example in self._items.values() if index >= mark]

    def __len__(self) -> int:
        return len(self._items)
