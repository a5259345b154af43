"""A trainer worker imports only what its role uses (cold start, restart after kill -9).

Importing torch took longer than everything else a worker imports together
(``python -X importtime``); a worker whose models are river models never
uses it, nor the server's web stack or the gateway, nor the parts of scipy
and river that river's packages import for models, statistics and data sets
driftloop's river models do not use (:mod:`services.lazy_modules` defers
those: in ``sys.modules``, their code not run). Checked in a fresh
interpreter, as ``driftloop worker --role trainer`` starts.
"""

from __future__ import annotations

import subprocess
import sys

import orjson

UNUSED_BY_A_RIVER_TRAINER = (
    "torch",
    "safetensors.torch",
    "fastapi",
    "uvicorn",
    "starlette",
    "streams.gateway",
    "streams.gateway_build",
    "services.server.app",
    "scipy.stats",
    "scipy.integrate",
    "scipy.sparse",
    "scipy.ndimage",
    "scipy.io",
    "river.proba",
    "river.tree",
    "river.datasets",
    "river.drift.datasets",
    "numpy.f2py",
    "numpy.testing",
    "redis",  # without a Redis URL
    "fsspec",  # a local store
    "prometheus_client",  # the spooled publisher's metrics
    "confluent_kafka",  # the spooled publisher's producer
    "services.cli.pointer_commands",
    "services.cli.checkpoint_commands",
)

_PROBE = """
import sys, orjson
import services.cli, streams.worker
services.cli.build_app(["worker_commands"])  # as `driftloop worker` does
from services.lazy_modules import is_deferred
from services.learning.config import example_path, load_config
from services.learning.buildcheck import check_buildable
check_buildable(list(load_config(example_path("river_logreg")).models))
print(orjson.dumps(sorted(m for m in sys.modules if not is_deferred(m))).decode())
"""


def test_the_trainer_role_with_a_river_model_imports_no_torch_web_stack_nor_unused_scipy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, check=True, text=True
    ).stdout
    loaded = set(orjson.loads(out.splitlines()[-1]))
    assert sorted(loaded & set(UNUSED_BY_A_RIVER_TRAINER)) == []
