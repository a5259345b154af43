"""The model servers' publisher through a 30 s broker outage under steady load.

A private Tansu broker is reachable only through a TCP proxy (it advertises
the proxy's port, so clients cannot bypass it); stopping the proxy refuses
connections and cuts the open ones. Events published meanwhile go to the
spool and are sent, in order, when the proxy is back. Read as a consumer
reads them (every record up to the true high watermark, repeats dropped by
``event_id`` as the contract says), every event arrived exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from schemas.codec import decode
from schemas.events import InferenceLog
from services.config import TopicsConfig
from services.kafka import ensure_topics, high_watermarks, make_consumer
from services.publish.spooled import SpooledPublisher
from tests.integration._tcp_proxy import private_broker

OUTAGE_S = 30.0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s: {what}")
        time.sleep(0.05)


def log_event(i: int) -> InferenceLog:
    return InferenceLog.new(
        event_id=f"outage-{i:06d}",
        request_id=f"req-{i}",
        model="ctr",
        model_version="v1",
        features={"x": float(i)},
        prediction=0.5,
        route="live",
        server="server-1",
    )


def test_every_inference_log_arrives_once_after_a_30s_outage(tmp_path: Path) -> None:
    topics = TopicsConfig(prefix="outage.")
    with private_broker(tmp_path) as broker:
        ensure_topics(broker.kafka, [topics.inference_logs], topics)
        publisher = SpooledPublisher.for_kafka(
            broker.kafka,
            tmp_path / "spool",
            topics=topics,
            settle_timeout_s=3.0,
            retry_s=0.5,
        )
        published: list[str] = []
        stop_load = threading.Event()

        def load() -> None:  # steady load: about 200 events a second
            i = 0
            while not stop_load.is_set():
                publisher.publish(log_event(i))
                published.append(f"outage-{i:06d}")
                i += 1
                time.sleep(0.005)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            wait_until(lambda: publisher.sent >= 500, 120, "500 events sent before the outage")
            broker.proxy.stop()
            outage_start = time.monotonic()
            wait_until(lambda: publisher.spooling, 60, "publisher spooling during the outage")
            sent_during = publisher.sent
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_start)))  # the outage
            spooled_in_outage = publisher.spooled
            broker.proxy.start()
            wait_until(lambda: not publisher.spooling, 180, "spool drained after the outage")
            after = publisher.sent
            wait_until(lambda: publisher.sent >= after + 500, 120, "live events after the spool")
        finally:
            stop_load.set()
            loader.join()
            publisher.close(timeout_s=120)
        print(
            f"published={len(published)} sent={publisher.sent} spooled={publisher.spooled}"
            f" dropped={publisher.dropped} sent_since_outage={publisher.sent - sent_during}"
        )
        assert publisher.dropped == 0
        assert spooled_in_outage > 1000  # the outage really sent events to the spool
        assert publisher.spool.pending_records == 0

        ends = high_watermarks(broker.kafka, [topics.inference_logs])
        consumer = make_consumer(broker.kafka)
        consumer.assign(list(ends))
        consumer.seek_to_beginning()
        by_partition: dict[int, list[str]] = {tp.partition: [] for tp in ends}
        deadline = time.monotonic() + 120
        try:
            while any(end > consumer.position(tp) for tp, end in ends.items()):
                assert time.monotonic() < deadline, "topic not read to its high watermark"
                for tp, batch in consumer.poll(timeout_ms=300).items():
                    for r in batch:
                        if r.offset < ends[tp]:
                            event = decode(InferenceLog, r.value)
                            assert r.key == event.request_id.encode()
                            by_partition[tp.partition].append(event.event_id)
        finally:
            consumer.close(autocommit=False)

    records = [e for ids in by_partition.values() for e in ids]
    seen_once = set(records)
    repeats = len(records) - len(seen_once)
    print(f"records on the topic={len(records)} repeats dropped by event_id={repeats}")
    assert seen_once == set(published)  # every event arrived
    assert len(seen_once) == len(published)  # and, by event_id, once
    rank = {e: i for i, e in enumerate(published)}
    for partition, ids in by_partition.items():
        first = [rank[e] for e in dict.fromkeys(ids)]
        assert first == sorted(first), f"partition {partition}: events out of publish order"
