"""Study files: a valid one loads; each kind of mistake is reported with file, line and field path; nothing runs."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from ablations.spec import StudyError, load_study

VALID = """
name: ok
description: resolution sweep
reference:
  preset: tiny
  overrides:
    train.lr: 0.002
axes:
  - name: resolution
    values: [16, 32]
  - name: data_ratio
    values: [5:5:1, 1:0:0]
design: grid
seeds: [0, 1]
resources: {cpu: 1, gpu: 0.5}
budget:
  multimodal: {steps: 30}
"""


def test_valid_study_loads(write_study):
    study = load_study(write_study(VALID))
    assert study.name == "ok"
    assert study.spec.axes[1].values == ["5:5:1", "1:0:0"]  # not YAML 1.1's base-60 integer 18301
    assert study.reference["train"]["steps"] == 30
    assert study.reference["train"]["lr"] == 0.002
    assert study.spec.resources.gpu == 0.5


def test_shipped_studies_and_suites_load(tmp_path):
    """Every YAML file under studies/, its folders included (the findings and long suites, their re-runs with fresh
    seeds, bring-your-own data): a study validates, and a suite validates with every study it lists. A study whose
    files a script beside it makes (make_data.py, as its README says) is loaded from a copy with its files made."""
    from ablations.suite import is_suite, load_suite

    paths = sorted((REPO / "studies").rglob("*.yaml"))
    assert len([p for p in paths if p.parent != REPO / "studies"]) >= 10
    for path in paths:
        if is_suite(path):
            assert load_suite(path).studies
        elif (path.parent / "make_data.py").exists():
            copy = tmp_path / path.parent.name
            copy.mkdir()
            runpy.run_path(str(path.parent / "make_data.py"))["write"](copy / "data")
            load_study(shutil.copy(path, copy / path.name))
        else:
            load_study(path)


def test_budget_in_tokens_becomes_steps(write_study):
    study = load_study(write_study(VALID.replace("{steps: 30}", "{tokens: 64000}")))
    tiny = study.reference
    assert study.reference["train"]["steps"] == -(
        -64000 // (tiny["train"]["batch_size"] * tiny["data"]["max_seq_len"])
    )


CASES = {
    "unknown top-level key": (
        VALID.replace("seeds: [0, 1]", "seed: [0, 1]"),
        ["study.yaml:13: seed: unknown key 'seed'; did you mean 'seeds'?"],
    ),
    "unknown alias": (
        VALID.replace("- name: resolution", "- name: resolutoin"),
        ["study.yaml:8: axes[0].name: unknown axis 'resolutoin'; did you mean 'resolution'?"],
    ),
    "unknown dotted path": (
        VALID.replace("- name: resolution", "- name: connector.num_image_token"),
        [
            "study.yaml:8: axes[0].name: unknown config field 'connector.num_image_token'; "
            "did you mean 'connector.num_image_tokens'?"
        ],
    ),
    "unknown connector": (
        VALID.replace(
            "- name: resolution\n    values: [16, 32]", "- name: connector\n    values: [avg-pool, cabs]"
        ),
        ["study.yaml:9: axes[0].values[1]: unknown connector 'cabs'", "known: avg-pool"],
    ),
    "more image tokens than patches": (
        VALID.replace(
            "- name: data_ratio\n    values: [5:5:1, 1:0:0]", "- name: image_tokens\n    values: [4, 16]"
        ),
        [
            "study.yaml:11: axes[1].values[1]: 16 image tokens exceed the 2x2=4 patches",
            "(in arm resolution=16,image_tokens=16)",
        ],
    ),
    "aim on the conv stem": (
        VALID.replace(
            "- name: data_ratio\n    values: [5:5:1, 1:0:0]", "- name: encoder_loss\n    values: [clip, aim]"
        ),
        ["study.yaml:11: axes[1].values[1]: aim needs encoder.stem: patchify"],
    ),
    "unknown encoder loss": (
        VALID.replace(
            "- name: data_ratio\n    values: [5:5:1, 1:0:0]", "- name: encoder_loss\n    values: [clip, mae]"
        ),
        ["study.yaml:11: axes[1].values[1]: unknown encoder loss 'mae' (known: none, clip, aim)"],
    ),
    "unknown encoder size": (
        VALID.replace(
            "- name: data_ratio\n    values: [5:5:1, 1:0:0]",
            "- name: encoder_size\n    values: [vit-l-cpu, vit-x]",
        ),
        ["study.yaml:11: axes[1].values[1]: unknown encoder_size 'vit-x'; known: vit-s-cpu"],
    ),
    "wrong type": (
        VALID.replace("values: [16, 32]", "values: [big, 32]"),
        ["study.yaml:9: axes[0].values[0]:", "valid integer", "'big'"],
    ),
    "bad ratio": (
        VALID.replace("[5:5:1, 1:0:0]", "[5:5:1, 5:5]"),
        ["study.yaml:11: axes[1].values[1]: data ratio '5:5' must be caption:interleaved:text"],
    ),
    "bad design": (
        VALID.replace("design: grid", "design: random"),
        ["study.yaml:12: design:", "'grid', 'one_at_a_time', 'zip' or 'search'"],
    ),
    "zip of unequal axes": (
        VALID.replace("design: grid", "design: zip").replace("[16, 32]", "[16, 32, 64]"),
        ["study.yaml:7: axes: design zip needs axes of equal length (resolution: 3, data_ratio: 2)"],
    ),
    "unknown preset": (
        VALID.replace("preset: tiny", "preset: tinny"),
        ["study.yaml:4: reference.preset: unknown preset 'tinny'; did you mean 'tiny'?"],
    ),
    "unknown override": (
        VALID.replace("train.lr: 0.002", "train.learning_rate: 0.002"),
        ["study.yaml:6: reference.overrides.train.learning_rate: unknown config field 'train.learning_rate'"],
    ),
    "zero cpus": (
        VALID.replace("cpu: 1", "cpu: 0"),
        ["study.yaml:14: resources.cpu: Input should be greater than 0"],
    ),
    "unknown budget stage": (
        VALID.replace("multimodal:", "multimodel:"),
        ["study.yaml:16: budget.multimodel: unknown budget stage 'multimodel'; known: encoder, multimodal"],
    ),
    "missing reference": (
        VALID.replace("reference:\n  preset: tiny\n  overrides:\n    train.lr: 0.002\n", ""),
        ["reference: Field required"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_located(case, write_study):
    text, expected = {**CASES, **SEARCH_CASES}[case]
    path = write_study(text)
    with pytest.raises(StudyError) as raised:
        load_study(path)
    message = str(raised.value)
    for fragment in expected:
        assert fragment.replace("study.yaml", str(path)) in message, message


def test_all_problems_are_reported_together(write_study):
    text = VALID.replace("values: [16, 32]", "values: [big, 32]").replace("[5:5:1, 1:0:0]", "[5:5:1, 5:5]")
    with pytest.raises(StudyError) as raised:
        load_study(write_study(text))
    assert len(raised.value.problems) >= 2


def test_invalid_yaml_names_the_line(write_study):
    with pytest.raises(StudyError, match=r"study.yaml:\d+: not valid YAML"):
        load_study(write_study("name: x\naxes: [\n"))


def test_invalid_study_runs_nothing(write_study, tmp_path: Path):
    path = write_study(VALID.replace("- name: resolution", "- name: resolutoin"))
    done = run_cli("run", str(path), cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "nothing was run" in done.stderr and "did you mean 'resolution'" in done.stderr
    assert not (tmp_path / "results").exists()


def test_schema_is_json_schema(tmp_path: Path):
    done = run_cli("schema", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema["type"] == "object"
    assert {"name", "reference", "axes", "design", "seeds", "resources", "budget"} <= set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False


SEARCH = """
name: s
reference:
  preset: tiny
  overrides:
    train.steps: 60
    train.eval_every: 10
design: search
search:
  sampler: tpe
  trials: 4
  metric: 0shot/avg
  scheduler: {grace_period: 20}
axes:
  - name: train.lr
    loguniform: [1.0e-4, 1.0e-2]
  - name: lm.width
    values: [32, 48]
"""

SEARCH_CASES = {
    "distribution in a grid": (
        SEARCH.replace("design: search", "design: grid").replace(
            "search:\n  sampler: tpe\n  trials: 4\n  metric: 0shot/avg\n  scheduler: {grace_period: 20}\n", ""
        ),
        ["study.yaml:10: axes[0].loguniform: a distribution needs design: search (grid enumerates values)"],
    ),
    "bounds": (
        SEARCH.replace("[1.0e-4, 1.0e-2]", "[1.0e-2, 1.0e-4]"),
        [
            "study.yaml:15: axes[0].loguniform: the low bound must be below the high bound (got [0.01, 0.0001])"
        ],
    ),
    "log of zero": (
        SEARCH.replace("[1.0e-4, 1.0e-2]", "[0.0, 1.0e-2]"),
        ["study.yaml:15: axes[0].loguniform: a log-uniform range must be positive"],
    ),
    "not numeric": (
        SEARCH.replace("name: train.lr", "name: connector.name"),
        [
            "study.yaml:15: axes[0].loguniform: connector.name is not a numeric field; give its choices as values"
        ],
    ),
    "two kinds": (
        SEARCH.replace("values: [32, 48]", "values: [32, 48]\n    int: [32, 64]"),
        [
            "study.yaml:16: axes[1]: an axis gives exactly one of values, loguniform, uniform, int (got values and int)"
        ],
    ),
    "cmaes and a categorical axis": (
        SEARCH.replace("sampler: tpe", "sampler: cmaes"),
        [
            "study.yaml:9: search.sampler: cmaes samples numeric distributions only; axes[1] (lm.width) gives values"
        ],
    ),
    "unknown sampler": (
        SEARCH.replace("sampler: tpe", "sampler: hyperband"),
        ["study.yaml:9: search.sampler: Input should be 'tpe', 'random', 'cmaes' or 'qmc'"],
    ),
    "a metric no trial records": (
        SEARCH.replace("metric: 0shot/avg", "metric: 0shot/accuracy"),
        ["study.yaml:11: search.metric: no trial records the metric '0shot/accuracy'"],
    ),
    "no evaluation rounds to cut at": (
        SEARCH.replace("    train.eval_every: 10\n", ""),
        ["study.yaml:11: search.scheduler: ASHA cuts trials at evaluation rounds", "set train.eval_every"],
    ),
    "a search without its block": (
        SEARCH.replace(
            "search:\n  sampler: tpe\n  trials: 4\n  metric: 0shot/avg\n  scheduler: {grace_period: 20}\n", ""
        ),
        ["study.yaml:7: design: design search needs a search: block"],
    ),
    "seeds beside a search": (
        SEARCH + "seeds: [0, 1]\n",
        ["study.yaml:18: seeds: a search runs each configuration with search.seeds seeds"],
    ),
    "a grid scheduler without a metric": (
        VALID.replace("design: grid", "design: grid\nscheduler: {grace_period: 10}").replace(
            "train.lr: 0.002", "train.lr: 0.002\n    train.eval_every: 10"
        ),
        ["scheduler: a scheduler outside a search needs its metric (and mode)"],
    ),
}


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_each_search_mistake_is_located(case, write_study):
    test_each_mistake_is_located(case, write_study)


def test_a_valid_search_loads(write_study):
    study = load_study(write_study(SEARCH))
    assert study.spec.axes[0].distribution == ("loguniform", (1.0e-4, 1.0e-2))
    assert study.scheduler.metric == "0shot/avg" and study.scheduler.mode == "max"
    assert study.seeds == [0]


def test_a_study_rebuilt_from_a_validated_run_skips_the_checks_of_its_arms_and_files():
    from ablations.spec import study_from_dict

    data = {
        "name": "rebuilt",
        "reference": {"preset": "tiny", "overrides": {"data.caption_files": "/nowhere/captions.parquet"}},
        "seeds": [0],
    }
    with pytest.raises(StudyError, match="no such file"):
        study_from_dict(dict(data))
    # A search's worker and `mm1ablate clean` rebuild it from what the run recorded: no file is read again.
    assert study_from_dict(dict(data), validated=True).name == "rebuilt"
