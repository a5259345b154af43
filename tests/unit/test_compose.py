"""docker-compose.yml is well-formed and production-like (parsed, not run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml parses docker-compose.yml (dev dependency)")

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _long_running(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("restart") != "no"}


def test_the_three_servers_are_there(compose: dict[str, Any]) -> None:
    images = {name: service["image"] for name, service in compose["services"].items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["redis"].startswith("redis:7")
    assert images["minio"].startswith("minio/minio:")


def test_every_service_has_a_pinned_image(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert isinstance(image, str), name
        assert ":" in image, name
        assert not image.endswith(":latest"), name


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in _long_running(compose).items():
        check = service.get("healthcheck")
        assert isinstance(check, dict), name
        assert isinstance(check["test"], list), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_ports_and_environment_values_are_strings(compose: dict[str, Any]) -> None:
    # YAML 1.1 reads 22:22 as a base-60 number and 1 as an int; compose
    # wants strings. Quoting them everywhere avoids both traps.
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), (name, port)
        for key, value in (service.get("environment") or {}).items():
            assert isinstance(value, str), (name, key)
    for key, value in compose["x-driftloop-env"].items():
        assert isinstance(value, str), key


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("kafka", "redis", "minio"):
        mounts = compose["services"][name]["volumes"]
        sources = {mount.split(":", 1)[0] for mount in mounts}
        assert sources, name
        assert sources <= declared, name


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    for name, service in compose["services"].items():
        assert set(service.get("depends_on", {})) <= services, name
    assert set(compose["x-depends-on-servers"]) <= services


def test_kafka_is_a_single_kraft_node_reachable_from_host_and_containers(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "zookeeper" not in str(env).lower()
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "localhost:9092" in advertised
    assert compose["x-driftloop-env"]["DRIFTLOOP_KAFKA_BOOTSTRAP"].split(":")[0] + ":" in advertised
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_driftloop_env_points_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = compose["x-driftloop-env"]
    services = set(compose["services"])
    assert env["DRIFTLOOP_KAFKA_BOOTSTRAP"].split(":")[0] in services
    assert env["DRIFTLOOP_REDIS_URL"].split("//")[1].split(":")[0] in services
    assert env["FSSPEC_S3_ENDPOINT_URL"].split("//")[1].split(":")[0] in services


def test_the_broker_admits_the_records_driftloop_writes(compose: dict[str, Any]) -> None:
    """Apache Kafka's default message.max.bytes (about 1 MiB) refuses valid 2 MiB
    events and the dead letters of larger records (issue 9, item 3)."""
    from schemas.limits import TOPIC_MAX_MESSAGE_BYTES

    env = compose["services"]["kafka"]["environment"]
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == TOPIC_MAX_MESSAGE_BYTES
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= TOPIC_MAX_MESSAGE_BYTES
