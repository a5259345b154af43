"""``driftloop demo`` end to end, as a user runs it: traffic goes over HTTP to two
model servers, the loop learns, checkpoints on drift and on schedule, dead-letters
what it must, the gateway promotes checkpoints on their figures and refuses a
poisoned one, which an operator then forces live and the guard rolls back; both
servers end at the final epoch, and no process is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_the_loop_and_leaves_nothing_behind() -> None:
    requests, drift_at = 8000, 2000  # room after the drift for the poisoned checkpoint
    options = ["--requests", str(requests), "--drift-at", str(drift_at)]
    options += ["--checkpoint-every", "400"]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--json", *options],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary = orjson.loads(done.stdout)
    traffic = summary["traffic"]

    # Every feedback event inside its window is joined exactly once; late ones
    # and malformed records are dead-lettered with their reason.
    assert summary["joined_examples"] == traffic["feedback"] - traffic["late_feedback"]
    letters = summary["dead_letters"]
    assert letters.get("late", 0) == traffic["late_feedback"] > 0
    assert letters.get("decode", 0) + letters.get("validation", 0) == traffic["malformed"]

    checkpoints = summary["checkpoints"]
    triggers = [c["trigger"] for c in checkpoints]
    assert "count" in triggers
    # A drift checkpoint follows the drift point: examples_seen counts the joined
    # examples learned, about 97% of requests here less the demo's 20% held out (78%).
    fired = [(c["trigger"], c["examples_seen"]) for c in checkpoints]
    after_drift = [n for trigger, n in fired if trigger == "drift" and n > drift_at * 0.7]
    assert after_drift, (fired, summary["final"])
    versions = [c["version"] for c in checkpoints]
    # the trainer's in order (the demo writes the poisoned one beside it: its event
    # may come before that of a trainer checkpoint numbered before it)
    poisoned = (summary["poison"] or {}).get("version")
    trained = [v for v in versions if v != poisoned]
    assert trained == sorted(trained)
    assert len(set(versions)) == len(versions)
    # The trainer relearned the inverted concept well past chance (about 0.6).
    assert summary["final"]["metrics"]["accuracy"] > 0.7
    # Everything joined was trained and checkpointed, but for the held-out share
    # (the demo's 20% of requests, by a hash of request_id: never learned) and
    # the open micro-batch (32 examples), which waits for the next run.
    joined = summary["joined_examples"]
    untrained = joined - summary["final"]["examples_seen"]
    assert 0.15 * joined < untrained < 0.25 * joined + 32

    # Bootstrap logs went to the topic; every other request was an HTTP call,
    # answered by one of the two servers, each serving a share.
    servers = summary["servers"]
    assert [s["server"] for s in servers] == ["serve-a", "serve-b"]
    bootstrap = summary["bootstrap_requests"]
    assert traffic["bootstrap_logs_to_topic"] == bootstrap
    assert traffic["predicted_over_http"] == requests - bootstrap
    assert sum(s["requests"] for s in servers) == requests - bootstrap
    assert all(s["requests"] > 0 for s in servers)
    # Feedback went both ways, and the servers accepted all they were sent.
    assert traffic["feedback_to_topic"] > 0
    assert sum(s["feedback_posted"] for s in servers) == traffic["feedback_over_http"] > 0

    # The gateway promoted checkpoints on their figures (the first with nothing
    # live to compare), each promotion the verdict's decision, with its reason;
    # every checkpoint has a verdict but the newest (see below).
    promotions = summary["promotions"]
    story = {k: summary[k] for k in ("timeline", "promotions", "rollbacks", "poison")}
    story["verdicts"] = [(v["version"], v["judge"], v["decision"]) for v in summary["verdicts"]]
    told = orjson.dumps(story).decode()  # printed whole when an assertion fails
    by_gateway = [p for p in promotions if p["actor"] == "gateway"]
    assert len(by_gateway) >= 2, told
    verdicts = summary["verdicts"]
    judged = {v["version"]: v for v in verdicts if v["judge"] == "gateway"}
    for p in by_gateway:
        verdict = judged[p["to"]]
        assert verdict["decision"] == "promote"
        assert verdict["epoch"] == p["epoch"]
        assert verdict["reason"] == p["reason"]
    assert judged[by_gateway[0]["to"]]["against"] is None
    later = judged[by_gateway[1]["to"]]
    assert later["n"] >= 50
    assert later["difference"] is not None
    # The demo stops the gateway once it has read every checkpoint event, so only
    # the worker's shutdown checkpoint and one candidate waiting for the guard
    # when it stopped can be left without a verdict.
    unjudged = summary["unjudged_checkpoints"]
    assert len(unjudged) <= 2, unjudged
    assert set(unjudged) <= set(versions[-2:]), (unjudged, versions)

    # The poisoned checkpoint's scene depends on timing: it waits until the guard
    # has kept a good live version, so on a loaded machine the traffic can end
    # first (once offered, it is judged at once: a failing candidate is refused
    # on arrival, even while a canary runs or the guard has not judged live).
    # tests/integration/test_gateway.py plays the same story deterministically;
    # here, whatever part of it happened must be right. When offered and judged,
    # it verified but was refused for its figures; forced live by the operator,
    # the guard rolled it back to the version it replaced within twice its
    # sample (50) of held-out examples (from 20 on, when the guard's detector on
    # the live error stream fired first), and said why.
    poison = summary["poison"]
    forced = [p for p in promotions if p["actor"] == "operator"]
    if poison is None or poison.get("verdict") != "reject":
        assert poison is None or poison.get("verdict") in (None, "superseded"), told
        assert forced == [], told
    else:
        refused = judged[poison["version"]]
        assert all(refused["checks"].values())
        assert refused["difference"] < 0
        assert [p["to"] for p in forced] == [poison["version"]]
        assert forced[0]["epoch"] == poison["forced_epoch"]
        # (the guard may also have rolled back a version right after the drift,
        # when every version scores badly and the one replaced slightly less so)
        guard = [
            r
            for r in summary["rollbacks"]
            if r["actor"] == "guard" and r["from"] == poison["version"]
        ]
        assert len(guard) == 1, told
        assert guard[0]["to"] == forced[0]["from"]
        assert guard[0]["epoch"] == poison["rolled_back_epoch"]
        [rollback] = [
            v
            for v in summary["verdicts"]
            if v["judge"] == "guard" and v["version"] == poison["version"]
        ]
        assert rollback["decision"] == "rollback"
        assert 20 <= rollback["n"] <= 100, told
        assert "accuracy" in guard[0]["reason"]
    # Every pointer change is a promotion, a rollback, or a canary set or cleared
    # (the demo's gateway promotes through a canary at 25% of the traffic).
    changes = [*promotions, *summary["rollbacks"], *summary["canaries"]]
    epochs = sorted(c["epoch"] for c in changes)
    assert epochs == list(range(1, len(epochs) + 1)), told
    canaries = [c for c in summary["canaries"] if c["action"] == "canary"]
    assert canaries, told
    assert all(c["actor"] == "gateway" and c["canary_percent"] == 25.0 for c in canaries)
    assert all(s["routes_served"].get("canary", 0) > 0 for s in servers), servers
    # Both servers served the gateway's versions and ended at the final epoch.
    pointer = summary["pointer"]
    assert pointer["epoch"] == epochs[-1]
    assert summary["epochs_converged"] is True
    # (a promotion soon replaced by the next may have answered no request of a server)
    for s in servers:
        assert (s["live"], s["applied_epoch"]) == (pointer["live"], pointer["epoch"])
        assert by_gateway[0]["to"] in s["versions_served"]
        served = {p["to"] for p in by_gateway} & set(s["versions_served"])
        assert len(served) >= 2, (s, by_gateway)

    # The broker, Redis, worker and both servers it started are gone once it has exited.
    pids = summary["processes"]
    assert set(pids) >= {"worker", "gateway", "serve-a", "serve-b"}
    assert len(pids) == 6
    alive = [pid for pid in pids.values() if psutil.pid_exists(pid)]
    alive = [pid for pid in alive if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_demo_leaves_no_server_behind(how: signal.Signals) -> None:
    """Stopped while both model servers serve: Ctrl-C unwinds and stops every child;
    kill -9 leaves them to PR_SET_PDEATHSIG. Either way none survives."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "demo", "--requests", "20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    children: list[psutil.Process] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # its log lines; the servers are started after the worker
            if "model server 'serve-b'" in line:
                break
        else:
            pytest.fail(f"the demo ended before starting its servers (exit {demo.wait()})")
        children = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert names.count(" serve ") == 2
        assert " worker " in names
        demo.send_signal(how)
        demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
