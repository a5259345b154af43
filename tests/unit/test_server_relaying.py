"""The model server's outbox relay: runs beside the follower, survives Redis and broker outages."""

from __future__ import annotations

import threading
import time

import redis

from schemas.errors import BrokerError
from services.pointer.relay import RelayResult
from services.server.follower import PointerFollower
from services.server.metrics import ServerMetrics
from services.server.registry import ModelRegistry
from services.server.relaying import PeriodicRelay
from tests.unit.server_fakes import FakeLoader, FakeReader, pointer


class FlakyRelay:
    """Fails with each error in ``errors`` in turn, then relays ``sent`` records per call."""

    def __init__(self, errors: list[Exception], sent: int = 2) -> None:
        self.errors = list(errors)
        self.sent = sent
        self.calls = 0
        self.block = threading.Event()
        self.block.set()

    def relay_pending(self, *, wait_s: float = 0.0) -> RelayResult:
        self.calls += 1
        self.block.wait()
        if self.errors:
            raise self.errors.pop(0)
        return RelayResult(sent=self.sent, duplicates=0, left=0)


def _value(metrics: ServerMetrics, name: str) -> float:
    got = metrics.registry.get_sample_value(name)
    return 0.0 if got is None else got


def test_failures_are_counted_kept_and_retried_until_a_relay_succeeds() -> None:
    metrics = ServerMetrics()
    relay = FlakyRelay([redis.ConnectionError("refused"), BrokerError("no broker")])
    periodic = PeriodicRelay(relay, interval_s=1.0, metrics=metrics)
    assert periodic.run_once() is None
    assert "refused" in (periodic.last_error or "")
    assert periodic.run_once() is None
    assert "no broker" in (periodic.last_error or "")
    assert _value(metrics, "driftloop_server_pointer_relay_failures_total") == 2
    result = periodic.run_once()
    assert result is not None
    assert result.sent == 2
    assert periodic.last_error is None
    assert _value(metrics, "driftloop_server_pointer_relayed_total") == 2


def test_the_follower_runs_the_relay_on_its_own_thread_and_a_stuck_one_delays_no_check() -> None:
    relay = FlakyRelay([])
    relay.block.clear()  # the first relay hangs (a broker that does not answer)
    reader = FakeReader()
    reader.states["m"] = pointer(1, live="v1")
    registry = ModelRegistry("m", FakeLoader())
    follower = PointerFollower(
        {"m": registry},
        reader,
        poll_interval_s=0.01,
        relay=PeriodicRelay(relay, interval_s=0.01),
    )
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while relay.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.calls == 1  # started, and stuck
        reader.states["m"] = pointer(2, live="v2")
        while registry.epoch != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert registry.epoch == 2  # the follower went on checking meanwhile
        relay.block.set()
        while relay.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.calls >= 3  # and the relay goes on once the broker answers
    finally:
        relay.block.set()
        follower.stop()
