"""The gateway's canary policy on the real stack (issue 11).

A ``driftloop worker --role all`` and a ``driftloop worker --role gateway``
run a river model whose promotion mode is ``canary``. The test plays the
model servers: it reads the pointer, routes each request by the documented
canary hash (:func:`services.server.routing.routes_to_canary`), predicts with
the version that serves it (loaded read-only, as a server loads it) and logs
the inference with its route, then sends the feedback.

The first checkpoint is promoted (nothing live: no canary to set); a later
candidate that passes the holdout comparison is first set as shadow
(``shadow_examples``): the test answers every request with it too and logs
that answer with route ``shadow``, the joiner pairs it with the live answer
and the label (ShadowScore), and once ``shadow_examples`` pairs were scored
the gateway sets it as canary at 50 % (in one pointer change: the shadow
slot empties), and once ``canary_examples`` attributed canary examples were
scored it is promoted on its live-traffic figures, with a verdict that
carries them. The shadow version's figures on route ``shadow`` reach the
live-metrics hash that ``driftloop status`` reads.
"""

from __future__ import annotations

import itertools
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from schemas.codec import encode
from schemas.events import FeedbackEvent, InferenceLog, Verdict, VersionEvent
from services.checkpoints.config import StoreConfig
from services.learning.config import parse_config
from services.pointer.base import pointer_key
from services.server.loader import StoreLoader
from services.server.routing import routes_to_canary
from services.validation.live_store import metrics_key
from tests.integration._procs import WorkerProcess, produce
from tests.integration.test_gateway import CONFIG as GATED
from tests.integration.test_gateway import MODEL, Topic, _pairs, _send, _wait, start_loop

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

CANARY_EXAMPLES = 40
SHADOW_EXAMPLES = 20
CONFIG = (
    GATED.replace('mode = "auto"', 'mode = "canary"\ncanary_percent = 50.0')
    .replace(
        "holdout_size = 300",
        f"holdout_size = 300\ncanary_examples = {CANARY_EXAMPLES}"
        f"\nshadow_examples = {SHADOW_EXAMPLES}",
    )
    .replace("enabled = true", "enabled = false")
)
#: The joiner's window here: a shadow answer is scored when its request's window
#: closes, so a short one keeps the shadow stage short.
JOIN_WINDOW_MS = 5_000


class Versions:
    """Versions loaded read-only, as a model server keeps them resident."""

    def __init__(self, store: Path) -> None:
        self.loader = StoreLoader(StoreConfig(root=store), parse_config(tomllib.loads(CONFIG)))
        self.loaded: dict[str, Any] = {}

    def predict(self, version: str, features: dict[str, Any]) -> Any:
        if version not in self.loaded:
            self.loaded[version] = self.loader.load(MODEL, version)
        [answer] = self.loaded[version].predict_many([features])
        return answer


def _serve(
    sandbox: Sandbox,
    client: redis.Redis[str],
    versions: Versions,
    pairs: Any,
    n: int,
) -> dict[str, int]:
    """``n`` requests answered the way a model server answers them (the shadow
    version's answer logged too, route ``shadow``); routes counted."""
    state = client.hgetall(pointer_key(sandbox.redis.key_prefix, MODEL))
    live, canary = state["live"], state.get("canary") or None
    shadow = state.get("shadow") or None
    percent = float(state.get("canary_percent") or 0)
    now = int(time.time() * 1000)
    logs, feedback, routes = [], [], {"live": 0, "canary": 0, "shadow": 0}
    batch = list(itertools.islice(pairs, n))
    for rid, features, label in batch:
        route = "canary" if canary and routes_to_canary(rid, percent) else "live"
        version = canary if route == "canary" else live
        assert version is not None
        answer = versions.predict(version, features)
        routes[route] += 1
        log = InferenceLog.new(
            event_id=f"i-{rid}",
            request_id=rid,
            model=MODEL,
            model_version=version,
            ts=now,
            features=features,
            prediction=answer.value if answer.value is not None else False,
            scores={str(k): v for k, v in (answer.scores or {}).items()} or None,
            route=route,
        )
        fb = FeedbackEvent.new(
            event_id=f"f-{rid}", request_id=rid, model=MODEL, ts=now + 1, label=label
        )
        logs.append((rid.encode(), encode(log)))
        feedback.append((rid.encode(), encode(fb)))
        if shadow is not None:
            mirrored = versions.predict(shadow, features)
            routes["shadow"] += 1
            shadow_log = log.model_copy(
                update={
                    "event_id": f"s-{rid}",
                    "model_version": shadow,
                    "prediction": mirrored.value if mirrored.value is not None else False,
                    "scores": {str(k): v for k, v in (mirrored.scores or {}).items()} or None,
                    "route": "shadow",
                }
            )
            logs.append((rid.encode(), encode(shadow_log)))
    produce(sandbox, sandbox.topics.inference_logs, logs)
    produce(sandbox, sandbox.topics.feedback, feedback)
    return routes


def test_a_candidate_runs_as_shadow_then_as_canary_and_is_promoted_on_its_live_figures(
    sandbox: Sandbox,
    tmp_path: Path,
    started: list[WorkerProcess],
    redis_client: redis.Redis[str],
) -> None:
    assert parse_config(tomllib.loads(CONFIG)).model(MODEL).promotion.mode == "canary"
    store, _, procs = start_loop(sandbox, tmp_path, CONFIG, join_window_ms=JOIN_WINDOW_MS)
    started += procs
    gateway = procs[1]
    verdicts = Topic(sandbox, sandbox.topics.verdicts, Verdict)

    changes = Topic(sandbox, sandbox.topics.version_events, VersionEvent)

    def pointer_at(epoch: int | None) -> VersionEvent:
        """The pointer as the change of ``epoch`` left it (its log, not Redis now:
        the traffic may have moved it on since)."""
        [event] = _wait(
            lambda: [e for e in changes.poll() if e.epoch == epoch][:1],
            f"the pointer change of epoch {epoch} on version-events",
            procs,
        )
        assert isinstance(event, VersionEvent)
        return event

    def decided(decision: str) -> Callable[[], list[Verdict]]:
        return lambda: [v for v in verdicts.poll() if v.decision == decision]

    try:
        # bootstrap: logs straight to the topics until the gateway made something live
        pairs = _pairs(5)
        _send(sandbox, pairs, 700)
        first = _wait(decided("promote"), "the first promotion", procs)[0]
        assert first.baseline_version is None
        versions = Versions(store)  # the store exists now
        # served traffic until a candidate becomes the canary
        routes = {"live": 0, "canary": 0, "shadow": 0}
        deadline = time.monotonic() + 180
        while not decided("canary")() and time.monotonic() < deadline:
            for route, n in _serve(sandbox, redis_client, versions, pairs, 100).items():
                routes[route] += n
            time.sleep(0.5)
        canary = _wait(decided("canary"), "a canary", procs)[0]
        assert canary.baseline_version == first.version
        assert canary.epoch is not None
        # it was a shadow first, judged on shadow answers paired with live's
        [shadowed] = [
            v for v in verdicts.seen if v.version == canary.version and v.decision == "shadow"
        ]
        assert (shadowed.policy, shadowed.baseline_version) == ("canary", first.version)
        assert canary.n >= SHADOW_EXAMPLES
        assert "shadow answers (live:" in canary.reason
        assert routes["shadow"] >= SHADOW_EXAMPLES
        # the pointer as the canary verdict left it (read from its log: by now the
        # traffic may have decided the canary and the next candidate be in a slot)
        state = pointer_at(canary.epoch)
        assert (state.action, state.canary, state.canary_percent) == (
            "canary",
            canary.version,
            50.0,
        )
        assert state.shadow is None  # moved from the shadow slot to the canary slot

        def shadow_figures() -> dict[str, Any] | None:
            raw = redis_client.hget(metrics_key(sandbox.redis.key_prefix, MODEL), canary.version)
            routes: dict[str, Any] = json.loads(raw)["routes"] if raw else {}
            figures = routes.get("shadow")
            return figures if figures and figures["n"] >= SHADOW_EXAMPLES else None

        # what `driftloop status` shows: the shadow version's figures on live traffic
        shadow_route = _wait(shadow_figures, "shadow figures in the metrics hash", procs)
        assert shadow_route["metrics"]["accuracy_total"] is not None

        # traffic split by the canary hash until the gateway decides on live figures
        def judged() -> list[Verdict]:
            return [
                v
                for v in verdicts.poll()
                if v.version == canary.version and v.decision in ("promote", "reject")
            ]

        while not judged():
            assert time.monotonic() < deadline + 180, gateway.text()[-3000:]
            for route, n in _serve(sandbox, redis_client, versions, pairs, 50).items():
                routes[route] += n
            time.sleep(0.5)
        assert routes["canary"] >= CANARY_EXAMPLES
        [verdict] = [
            v
            for v in verdicts.seen
            if v.version == canary.version and v.decision not in ("shadow", "canary")
        ]
        assert verdict.judge == "gateway"
        assert verdict.policy == "canary"
        assert verdict.n >= CANARY_EXAMPLES
        assert verdict.baseline_version == first.version
        assert verdict.candidate is not None
        assert verdict.baseline is not None
        after = pointer_at(verdict.epoch)
        if verdict.decision == "promote":
            assert verdict.difference is not None
            # within the tolerance, or beyond it but not significantly worse per example
            assert verdict.difference >= -0.05 or "not significant" in verdict.reason
            assert after.live == canary.version
        else:
            assert verdict.difference is not None
            assert verdict.difference < -0.05
            assert after.live == first.version
        assert after.canary is None  # promoted or cleared: the slot is free
    finally:
        verdicts.close()
        changes.close()
