"""Hostile model configurations: every one is refused when the config loads, nothing runs.

Guards issue 8 item 1: on main a factory path was checked by its text
(``river.``, ``torch.``, ``services.learning.`` prefixes, widened by the
config's own ``allowed_prefixes``) and then resolved by walking attributes,
so ``torch.os.system`` ran a shell command when the worker built the model,
and loading the config refused none of these. Now each is a ConfigError at
:func:`~services.learning.config.parse_config`, before anything is built.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from services.learning.buildcheck import check_buildable
from services.learning.config import load_config, parse_config
from services.learning.factory import registered_builders, resolve

SENTINEL = "SENTINEL"  # replaced by a path under tmp_path: it must never be created

MODEL = """
[[model]]
name = "m"
kind = "{kind}"
{extra}
factory = {factory}
"""

TORCH_EXTRA = (
    'task = "classification"\noptimizer = { path = "torch.optim.SGD", params = { lr = 0.1 } }'
)


def logreg_with(optimizer: str) -> str:
    """A river LogisticRegression whose optimizer is the nested factory table ``optimizer``."""
    return (
        '{ path = "river.linear_model.LogisticRegression",'
        f" params = {{ optimizer = {optimizer} }} }}"
    )


#: (id, kind, factory table as TOML). Entries that would run code touch SENTINEL.
CORPUS: list[tuple[str, str, str]] = [
    (
        "torch.os.system",
        "river",
        '{ path = "torch.os.system", params = { command = "touch SENTINEL" } }',
    ),
    ("os.system", "river", '{ path = "os.system", params = { command = "touch SENTINEL" } }'),
    ("builtins.eval", "river", '{ path = "builtins.eval", params = { source = "1" } }'),
    ("builtins.exec", "river", '{ path = "builtins.exec", params = { source = "1" } }'),
    (
        "subprocess.Popen",
        "river",
        '{ path = "subprocess.Popen", params = { args = ["touch", "SENTINEL"] } }',
    ),
    ("subprocess.run via a walk", "river", '{ path = "river.compose.subprocess.run" }'),
    (
        "pickle via river",
        "river",
        '{ path = "river.compose.pickle.loads", params = { data = "x" } }',
    ),
    (
        "numpy via river",
        "river",
        '{ path = "river.linear_model.np.load", params = { file = "SENTINEL" } }',
    ),
    ("numpy module via river", "river", '{ path = "river.linear_model.np" }'),
    ("numpy.save", "river", '{ path = "numpy.save", params = { file = "SENTINEL", arr = [1] } }'),
    ("torch.load", "torch", '{ path = "torch.load", params = { f = "SENTINEL" } }'),
    ("torch.save", "torch", '{ path = "torch.save", params = { obj = 1, f = "SENTINEL" } }'),
    (
        "torch.hub.load",
        "torch",
        '{ path = "torch.hub.load", params = { repo_or_dir = "x/y", model = "m" } }',
    ),
    (
        "torch.serialization.load",
        "torch",
        '{ path = "torch.serialization.load", params = { f = "SENTINEL" } }',
    ),
    (
        "torch through a module attribute",
        "torch",
        '{ path = "torch.nn.modules.module.torch.load" }',
    ),
    ("a torch function", "torch", '{ path = "torch.nn.functional.relu" }'),
    ("a torch module object", "torch", '{ path = "torch.nn.functional" }'),
    ("a method through a class", "torch", '{ path = "torch.nn.Module.load_state_dict" }'),
    ("a class outside the torch bases", "torch", '{ path = "torch.nn.Parameter" }'),
    ("torch.nn.parallel", "torch", '{ path = "torch.nn.parallel.DistributedDataParallel" }'),
    ("a river dataset (downloads)", "river", '{ path = "river.datasets.Phishing" }'),
    ("a river synthetic dataset", "river", '{ path = "river.datasets.synth.Agrawal" }'),
    (
        "river's stream cache (unpickles)",
        "river",
        '{ path = "river.stream.Cache", params = { directory = "SENTINEL" } }',
    ),
    (
        "river.stream.iter_csv",
        "river",
        '{ path = "river.stream.iter_csv", params = { filepath_or_buffer = "SENTINEL" } }',
    ),
    ("river.evaluate", "river", '{ path = "river.evaluate.progressive_val_score" }'),
    ("a river function", "river", '{ path = "river.compose.learn_during_predict" }'),
    ("river.utils.Rolling", "river", '{ path = "river.utils.Rolling" }'),
    ("a river class outside the bases", "river", '{ path = "river.proba.Gaussian" }'),
    ("river's rust extension", "river", '{ path = "river._river_rust.drift.AdaptiveWindowing" }'),
    ("a dunder segment", "river", '{ path = "river.linear_model.__builtins__" }'),
    (
        "a dunder class attribute",
        "river",
        '{ path = "river.linear_model.LogisticRegression.__init__" }',
    ),
    ("a private segment", "river", '{ path = "river.linear_model._private" }'),
    ("a driftloop function", "river", '{ path = "services.learning.factory.build" }'),
    (
        "a walk out of a builder module",
        "river",
        '{ path = "services.learning.factory.importlib.import_module" }',
    ),
    ("a driftloop class", "river", '{ path = "services.learning.adapters.RiverAdapter" }'),
    ("a look-alike package", "river", '{ path = "riverbank.linear_model.X" }'),
    (
        "nested: os.system as an optimizer",
        "river",
        logreg_with('{ factory = "os.system", params = { command = "touch SENTINEL" } }'),
    ),
    (
        "nested: torch.os.system",
        "river",
        logreg_with('{ factory = "torch.os.system", params = { command = "touch SENTINEL" } }'),
    ),
    ("nested: a dataset", "river", logreg_with('{ factory = "river.datasets.Phishing" }')),
    ("nested: not a string", "river", logreg_with("{ factory = 5 }")),
    ("nested: unknown keys", "river", logreg_with('{ factory = "river.optim.SGD", run = "x" }')),
    (
        "nested in a pipeline's steps",
        "river",
        '{ path = "services.learning.factory.pipeline", params = { steps = ['
        '{ factory = "river.stream.iter_csv", params = { filepath_or_buffer = "SENTINEL" } },'
        '{ factory = "river.linear_model.LogisticRegression" } ] } }',
    ),
    (
        "nested two levels down",
        "river",
        '{ path = "river.tree.HoeffdingAdaptiveTreeClassifier", params = { drift_detector ='
        ' { factory = "river.drift.ADWIN", params = { delta = { factory = "os.system" } } } } }',
    ),
]


def toml_of(kind: str, factory: str, sentinel: Path) -> str:
    extra = TORCH_EXTRA if kind == "torch" else ""
    return MODEL.format(kind=kind, extra=extra, factory=factory).replace(SENTINEL, str(sentinel))


@pytest.mark.parametrize(("kind", "factory"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_hostile_factories_are_refused_when_the_config_loads(
    kind: str, factory: str, tmp_path: Path
) -> None:
    sentinel = tmp_path / "ran"
    path = tmp_path / "evil.toml"
    path.write_text(toml_of(kind, factory, sentinel))
    with pytest.raises(ConfigError, match="factory") as info:
        load_config(path)
    assert info.value.context["model"] == "m"
    assert not sentinel.exists()


def test_a_config_cannot_widen_the_list_with_allowed_prefixes(tmp_path: Path) -> None:
    """The key of main's widening is refused, saying it was removed, even with a fine factory."""
    sentinel = tmp_path / "ran"
    for factory in (
        '{ path = "os.system", params = { command = "touch SENTINEL" } }',
        '{ path = "river.linear_model.LogisticRegression" }',
    ):
        text = toml_of("river", factory, sentinel) + 'allowed_prefixes = ["os.", "builtins."]\n'
        with pytest.raises(ConfigError, match="allowed_prefixes was removed"):
            parse_config(tomllib.loads(text))
    assert not sentinel.exists()


def test_a_torch_optimizer_slot_takes_only_an_optimizer_class() -> None:
    """An admitted class of the wrong kind in the optimizer slot is refused by the dry build."""
    text = MODEL.format(
        kind="torch",
        extra='task = "classification"\noptimizer = { path = "torch.nn.Linear" }',
        factory='{ path = "services.learning.torch_models.HashedLinear" }',
    )
    models = parse_config(tomllib.loads(text)).models
    with pytest.raises(ConfigError, match=r"no torch\.optim\.Optimizer class") as info:
        check_buildable(models)
    assert info.value.context["model"] == "m"


def test_only_the_code_registered_builders_are_builders() -> None:
    assert registered_builders() == [
        "services.learning.factory.pipeline",
        "services.learning.torch_models.HashedFactorizationMachine",
        "services.learning.torch_models.HashedLinear",
    ]
    for path in registered_builders():
        assert callable(resolve(path))
