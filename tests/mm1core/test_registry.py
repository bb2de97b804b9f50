"""Each kind of choice is declared once, in a torch-free registry: every entry's implementation loads, validation and
the builders both read the registry, and the README's axis table lists exactly the registered choices."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO
from torch import nn

from mm1core.config import (
    CONNECTORS,
    ENCODER_LOSSES,
    IMAGE_TOKEN_POSITIONS,
    LM_POSITIONS,
    STEMS,
    apply_overrides,
    config_from_dict,
    config_problems,
    config_to_dict,
)
from mm1core.presets import get_preset
from mm1core.registry import Choice, Registry

REGISTRIES = {
    "connector.name": CONNECTORS,
    "encoder.stem": STEMS,
    "encoder_pretrain.loss": ENCODER_LOSSES,
    "lm.positions": LM_POSITIONS,
    "connector.token_positions": IMAGE_TOKEN_POSITIONS,
}


@pytest.mark.parametrize("registry", [CONNECTORS, STEMS, ENCODER_LOSSES], ids=lambda r: r.kind)
def test_every_registered_implementation_loads(registry):
    for name in registry:
        choice = registry[name]
        if choice.implementation:
            assert callable(choice.load())
    if registry is CONNECTORS:
        assert all(issubclass(CONNECTORS.load(name), nn.Module) for name in CONNECTORS)


def test_validating_a_config_never_imports_torch():
    code = (
        "import sys; from mm1core.config import config_problems, CONNECTORS;"
        "from mm1core.presets import get_preset; assert not config_problems(get_preset('small'));"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("field", list(REGISTRIES))
def test_an_unregistered_choice_is_refused_at_its_field_with_the_closest_name(field):
    registry = REGISTRIES[field]
    first = next(iter(registry))
    tree = apply_overrides(config_to_dict(get_preset("tiny")), {field: first + "x"})
    problems = [p for p in config_problems(config_from_dict(tree)) if p.path == field]
    assert len(problems) == 1 and f"did you mean {first!r}?" in problems[0].message
    assert f"unknown {registry.kind} {first + 'x'!r}" in problems[0].message


def test_a_choice_objects_at_the_field_it_blames():
    tree = apply_overrides(
        config_to_dict(get_preset("tiny")), {"encoder_pretrain.loss": "aim", "connector.num_image_tokens": 5}
    )
    problems = {p.path: p.message for p in config_problems(config_from_dict(tree))}
    assert "aim needs encoder.stem: patchify" in problems["encoder_pretrain.loss"]
    assert "avg-pool needs a square number of image tokens" in problems["connector.num_image_tokens"]


def test_a_registry_says_what_it_holds():
    registry = Registry("widget", [Choice("round", "math:sqrt"), Choice("flat", check=lambda n: "too flat")])
    assert list(registry) == ["round", "flat"] and "round" in registry and len(registry) == 2
    assert registry.load("round")(9.0) == 3.0
    assert registry.problem("flat", 1) == "too flat" and registry.problem("round") is None
    assert registry.problem("rund") == "unknown widget 'rund'; did you mean 'round'? (known: round, flat)"
    with pytest.raises(LookupError):
        registry.load("flat")


def _readme_row(axis: str) -> str:
    readme = (REPO / "README.md").read_text()
    return next(line for line in readme.splitlines() if line.startswith(f"| `{axis}` |"))


@pytest.mark.parametrize(("axis", "registry"), [("connector", CONNECTORS), ("encoder_loss", ENCODER_LOSSES)])
def test_the_readme_axis_table_lists_exactly_the_registered_choices(axis, registry):
    values = _readme_row(axis).split("|")[3]
    # Backticked names in the values cell, config paths (`encoder.stem: patchify`) aside.
    named = {token for token in re.findall(r"`([^`]+)`", values) if "." not in token}
    assert named == set(registry)


def test_the_task_file_schemas_are_documented_as_registered():
    from mm1core.config import EVAL_TASKS, FILE_TASK_KINDS
    from mm1core.data.byo import TASK_SCHEMAS

    docs = (REPO / "docs" / "data-formats.md").read_text().splitlines()
    assert list(EVAL_TASKS) == ["world", *FILE_TASK_KINDS] and set(TASK_SCHEMAS) == set(FILE_TASK_KINDS)
    for kind, spec in FILE_TASK_KINDS.items():
        row = next(line for line in docs if line.startswith(f"| `{kind}` | `"))
        assert all(f"`{column}: {type_}`" in row for column, type_ in spec.columns), row
        assert TASK_SCHEMAS[kind].names == [column for column, _ in spec.columns]
