"""The demo's view tells promotions from rollbacks, and converged from not; it reads
pointer changes from version-events (a change relayed twice counts once, epochs in
order) and shows verdicts with their figures."""

from __future__ import annotations

from schemas.events import Verdict, VersionEvent
from services.demo.servers import ServerStats
from services.demo.traffic import TrafficConfig, plan
from services.demo.view import DemoView


def _event(action: str, epoch: int, live: str, before: str | None) -> VersionEvent:
    return VersionEvent.new(
        event_id=f"m:{epoch}",
        model="m",
        action=action,
        epoch=epoch,
        live=live,
        from_live=before,
        actor="guard" if action == "rollback" else "gateway",
    )


def test_promotions_rollback_and_convergence_in_the_summary() -> None:
    view = DemoView(traffic=plan(TrafficConfig(requests=200, drift_at=100))[1])
    a, b = ServerStats("serve-a", 1, 11), ServerStats("serve-b", 2, 12)
    view.servers = [a, b]
    assert not view.converged  # no pointer yet
    view.add_change(_event("promote", 1, "v1", None))
    view.add_change(_event("rollback", 3, "v1", "v2"))  # read before epoch 2
    view.add_change(_event("promote", 2, "v2", "v1"))
    view.add_change(_event("promote", 2, "v2", "v1"))  # relayed twice
    view.add_verdict(
        Verdict.new(
            model="m",
            version="v2",
            baseline_version="v1",
            judge="gateway",
            policy="auto",
            decision="promote",
            metric="accuracy",
            candidate=0.9,
            baseline=0.8,
            difference=0.1,
            n=50,
            epoch=2,
        )
    )
    a.live, a.epoch = "v1", 3
    b.live, b.epoch = "v2", 2
    assert not view.converged  # serve-b has not applied the rollback
    b.live, b.epoch = "v1", 3
    assert view.converged
    summary = view.summary()
    assert [p["epoch"] for p in summary["promotions"]] == [1, 2]
    [rollback] = summary["rollbacks"]
    assert (rollback["from"], rollback["to"], rollback["actor"]) == ("v2", "v1", "guard")
    [verdict] = summary["verdicts"]
    assert (verdict["version"], verdict["against"], verdict["difference"]) == ("v2", "v1", 0.1)
    assert view.verdict_on("v2") is not None
    assert view.verdict_on("v2", judge="guard") is None
    assert summary["pointer"] == {"live": "v1", "canary": None, "canary_percent": 0.0, "epoch": 3}
    assert summary["epochs_converged"] is True
    assert [s["server"] for s in summary["servers"]] == ["serve-a", "serve-b"]
    view.render()  # the live panel renders with servers and changes
