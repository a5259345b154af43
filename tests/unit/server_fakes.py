"""Fakes for the model server's unit tests (plain classes, no pytest fixtures)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import CheckpointCorruptError, SchemaError
from services.learning.adapters import Prediction
from services.pointer.base import PointerState
from services.publish.memory import InMemoryPublisher
from services.server.app import ServerContext, create_app
from services.server.config import ServerConfig
from services.server.follower import PointerFollower
from services.server.metrics import ServerMetrics
from services.server.registry import ModelRegistry


class VersionAdapter:
    """Predicts its own version name, so a response shows which adapter really served it."""

    name = "m"
    kind = "fake"
    task = "classification"

    def __init__(self, version: str) -> None:
        self.version = version
        self.calls = 0

    def check_features(self, features: Mapping[str, Any]) -> None:
        if "bad" in features:
            raise SchemaError("refused by the model", field="features.bad")

    def predict_many(self, features: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        for i, x in enumerate(features):
            try:
                self.check_features(x)
            except SchemaError as exc:
                raise SchemaError(exc.reason, field=exc.field, index=i) from None
        self.calls += 1
        return [Prediction(self.version, {self.version: 1.0}) for _ in features]


@dataclass
class FakeLoader:
    """Loads any version; those in ``broken`` fail as a corrupt checkpoint would."""

    broken: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, model: str, version: str) -> VersionAdapter:
        with self.lock:
            self.loads.append(version)
        if version in self.broken:
            raise CheckpointCorruptError("sha256 mismatch", model=model, version=version)
        return VersionAdapter(version)


@dataclass
class FakeReader:
    """A PointerReader whose state (or failure) the test sets."""

    states: dict[str, PointerState | None] = field(default_factory=dict)
    error: Exception | None = None
    reads: int = 0

    def get(self, model: str) -> PointerState | None:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.states.get(model)


@dataclass
class FakeReporter:
    reports: list[tuple[str, int]] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)

    def report(self, model: str, epoch: int) -> None:
        self.reports.append((model, epoch))

    def withdraw(self, model: str) -> None:
        self.withdrawn.append(model)


def pointer(epoch: int, live: str | None = "v1", **fields: Any) -> PointerState:
    return PointerState(model="m", epoch=epoch, live=live, **fields)


@dataclass
class Harness:
    """An app over fakes: one model ``m``."""

    loader: FakeLoader
    reader: FakeReader
    registry: ModelRegistry
    follower: PointerFollower
    publisher: InMemoryPublisher
    metrics: ServerMetrics
    ctx: ServerContext
    app: Any


def harness(*, resident: int = 4, **config: Any) -> Harness:
    loader = FakeLoader()
    reader = FakeReader()
    metrics = ServerMetrics()
    registry = ModelRegistry(
        "m",
        loader,
        resident=resident,
        on_failure=lambda f: metrics.load_failures.labels("m").inc(),
    )
    follower = PointerFollower({"m": registry}, reader, reporter=FakeReporter())
    publisher = InMemoryPublisher()
    config.setdefault("server_id", "test-server")
    ctx = ServerContext(
        config=ServerConfig(**config),
        registries={"m": registry},
        publisher=publisher,
        metrics=metrics,
        follower=follower,
    )
    return Harness(loader, reader, registry, follower, publisher, metrics, ctx, create_app(ctx))
