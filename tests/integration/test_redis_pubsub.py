"""Redis of the stack: pub/sub and per-test key prefixes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def test_pubsub_delivers_a_published_message(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    channel = sandbox.redis.key("fraud", "versions")
    pubsub = redis_client.pubsub()
    pubsub.subscribe(channel)
    confirmation = pubsub.get_message(timeout=10)
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    receivers = redis_client.publish(channel, '{"live": "v2"}')
    assert receivers == 1
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
    pubsub.close()
    assert message is not None
    assert message["channel"] == channel
    assert message["data"] == '{"live": "v2"}'


def test_each_test_gets_its_own_key_prefix(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    key = sandbox.redis.key("fraud", "pointer")
    assert key.startswith(sandbox.redis.key_prefix)
    assert sandbox.name in sandbox.redis.key_prefix
    redis_client.hset(key, mapping={"live": "v1", "epoch": "1"})
    assert redis_client.hgetall(key) == {"live": "v1", "epoch": "1"}
