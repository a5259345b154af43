"""The demo's view tells promotions from the rollback, and converged from not."""

from __future__ import annotations

from schemas.events import VersionEvent
from services.demo.servers import ServerStats
from services.demo.traffic import TrafficConfig, plan
from services.demo.view import DemoView


def _event(action: str, epoch: int, live: str, before: str | None) -> VersionEvent:
    return VersionEvent.new(
        model="m", action=action, epoch=epoch, live=live, from_live=before, actor="demo"
    )


def test_promotions_rollback_and_convergence_in_the_summary() -> None:
    view = DemoView(traffic=plan(TrafficConfig(requests=200, drift_at=100))[1])
    a, b = ServerStats("serve-a", 1, 11), ServerStats("serve-b", 2, 12)
    view.servers = [a, b]
    assert not view.converged  # no pointer yet
    view.add_change(_event("promote", 1, "v1", None))
    view.add_change(_event("promote", 2, "v2", "v1"))
    view.add_change(_event("rollback", 3, "v1", "v2"))
    a.live, a.epoch = "v1", 3
    b.live, b.epoch = "v2", 2
    assert not view.converged  # serve-b has not applied the rollback
    b.live, b.epoch = "v1", 3
    assert view.converged
    summary = view.summary()
    assert [p["epoch"] for p in summary["promotions"]] == [1, 2]
    assert summary["rollback"]["from"] == "v2"
    assert summary["rollback"]["to"] == "v1"
    assert summary["pointer"] == {"live": "v1", "epoch": 3}
    assert summary["epochs_converged"] is True
    assert [s["server"] for s in summary["servers"]] == ["serve-a", "serve-b"]
    view.render()  # the live panel renders with servers and changes
