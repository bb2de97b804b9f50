"""A researcher's own evaluation tasks: files validated at plan time, prompts built as the world's, scored by the
same suite, compared by the same statistics, and a study on files alone, end to end on a dataset no one here wrote
(scikit-learn's handwritten digits)."""

from __future__ import annotations

import io
import json
import runpy
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_cli
from mlflow.tracking import MlflowClient
from PIL import Image

from mm1core import schema
from mm1core.config import (
    EvalConfig,
    EvalTaskConfig,
    apply_overrides,
    config_from_dict,
    config_problems,
    config_to_dict,
)
from mm1core.data.byo import read_task_rows, validate_task_files, write_documents
from mm1core.data.sources import uses_world_text
from mm1core.eval import file_task_headlines, scored_metrics
from mm1core.eval.file_tasks import _any_match, _files_digest, _floors, task_items, task_prompt
from mm1core.eval.protocol import metric_family
from mm1core.presets import get_preset

MAKE_DATA = REPO / "studies" / "digits" / "make_data.py"


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The digits study's files, written by the script the study ships."""
    out = tmp_path_factory.mktemp("digits") / "data"
    runpy.run_path(str(MAKE_DATA))["write"](out)
    return out


def test_task_files_are_checked_row_by_row(tmp_path):
    rows = [
        {"image": _png("red"), "question": "what colour ?", "answers": ["red"], "split": "test"},
        {"image": b"not a png", "question": " ", "answers": [], "split": "test"},
        {"image": _png("blue"), "question": "what colour ?", "answers": ["blue", None], "split": "train"},
    ]
    path = tmp_path / "vqa.parquet"
    write_documents(path, "task:vqa", rows)
    problems = validate_task_files(path, "vqa")
    assert f"{path}: row 1 (0-based): column 'image': cannot decode image bytes" in problems[0]
    assert any("row 1 (0-based): column 'question': empty text" in p for p in problems)
    assert any("row 1 (0-based): column 'answers': empty list" in p for p in problems)
    assert any("row 2 (0-based): column 'answers': entry 1: null value" in p for p in problems)
    # A split selects rows: the test split alone is clean, a split with no rows is a problem, not an empty task.
    in_test = validate_task_files(path, "vqa", split="test")
    assert len(in_test) == 3 and not any("row 2" in p for p in in_test)
    assert validate_task_files(path, "vqa", split="dev") == [f"{path}: no rows of split 'dev'"]
    assert validate_task_files(path, "caption")[0].endswith(
        "column 'references': missing (columns found: 'image', 'question', 'answers', 'split')"
    )
    clean = tmp_path / "clean.parquet"
    write_documents(clean, "task:vqa", [rows[0]])
    assert validate_task_files(clean, "vqa") == []
    assert read_task_rows(clean, "vqa")[0]["answers"] == ["red"]
    no_split = tmp_path / "no-split.parquet"
    write_documents(no_split, "task:text", [{"prompt": "two plus two is", "answers": ["4", "four"]}])
    assert validate_task_files(no_split, "text", split="test") == [
        f"{no_split}: column 'split': missing (the task takes the rows of split 'test')"
    ]


def _with_tasks(tasks: list[dict], **overrides) -> dict:
    return apply_overrides(config_to_dict(get_preset("tiny")), {"eval.tasks": tasks, **overrides})


def test_a_config_says_which_task_is_declared_wrong():
    def problems(tasks: list[dict]) -> list[str]:
        return [str(p) for p in config_problems(config_from_dict(_with_tasks(tasks)))]

    assert problems([{"name": "world"}]) == []
    found = problems(
        [
            {"name": "world"},
            {"name": "mine", "kind": "vqa", "files": "x.parquet"},
            {"name": "mine", "kind": "caption", "files": "y.parquet", "shots": [0]},
            {"name": "train", "kind": "text", "files": "z.parquet", "shots": [0]},
            {"name": "odd", "kind": "speech"},
            {"name": "cap", "kind": "caption", "files": "c.parquet", "shots": [0], "plays": "vqa"},
            {"name": "w2", "kind": "world", "files": "c.parquet"},
        ]
    )
    text = "\n".join(found)
    assert all(p.startswith("eval.tasks: task ") for p in found)
    assert "task 1 ('mine'): the name is used by 2 tasks" in text
    assert "task 1 ('mine'): 4-shot prompts need demonstrations" in text  # eval.shots is (0, 4, 8)
    assert "task 3 ('train'): the name 'train' is taken" in text
    assert "task 4 ('odd'): unknown evaluation task kind 'speech' (known: world, caption, vqa, text)" in text
    assert "task 5 ('cap'): a caption task can play the paper's caption column, not 'vqa'" in text
    assert "task 6 ('w2'): the world's suite takes no files" in text
    assert problems([]) == [
        "eval.tasks: no evaluation task; the default is [{name: world}], the generated world's suite"
    ]


def test_prompts_follow_the_templates_and_demonstrations_never_depend_on_the_trial(digits):
    cfg = EvalConfig(shots=(0, 4))
    task = EvalTaskConfig(
        name="dv", kind="vqa", files=str(digits / "vqa-task.parquet"), split="test", demos_split="train"
    )
    items = task_items(task)
    zero, four = task_prompt(task, cfg, 0, 3), task_prompt(task, cfg, 4, 3)
    assert zero.text == f"<image> question {items[3].prompt} answer"
    assert four.text.endswith(zero.text) and four.text.count("<image>") == 5
    assert four.text.count(" answer ") == 4 and four.text.count(" .") == 4
    assert len(four.scenes) == 5 and four.scenes[-1] == items[3].image and four.references == zero.references
    # Demonstrations come from the train split only, and from the evaluation set's seed, the task and the item.
    train_images = {row["image"] for row in read_task_rows(task.files, "vqa", split="train")}
    assert set(four.scenes[:4]) <= train_images
    assert task_prompt(task, cfg, 4, 3) == four and task_prompt(task, cfg, 4, 4).scenes != four.scenes
    other_set = task_prompt(task, EvalConfig(shots=(0, 4), set_seed=1), 4, 3)
    assert other_set.scenes != four.scenes
    text_task = EvalTaskConfig(
        name="dt", kind="text", files=str(digits / "text-task.parquet"), split="test", demos_split="train"
    )
    shown = task_prompt(text_task, cfg, 4, 0).text.split(" . ")
    assert len(shown) == 5 and shown[-1] == task_items(text_task)[0].prompt
    caption = EvalTaskConfig(
        name="dc", kind="caption", files=str(digits / "caption-task.parquet"), split="test"
    )
    assert (
        task_prompt(caption, cfg, 0, 0).text == "<image>"
        and len(task_prompt(caption, cfg, 0, 0).references) == 3
    )


def test_floors_and_scores_of_file_tasks():
    vqa = EvalTaskConfig(name="v", kind="vqa", files="-")
    items = [
        _item(("red", "red"), "colour"),  # two references: even the right answer scores 1/3 (VQA's formula)
        _item(("blue",), "colour"),
        _item(("3",), "count"),
        _item(("red",), "colour"),
    ]
    floors = _floors(vqa, "v/0shot", items)
    assert floors["floor/oracle/v/0shot/vqa"] == pytest.approx((1 / 3 + 1 + 1 + 1) / 4)
    assert floors["floor/chance/v/0shot/vqa/colour"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert floors["floor/chance/v/0shot/vqa/count"] == 1.0
    text = EvalTaskConfig(name="t", kind="text", files="-")
    floors = _floors(text, "t/0shot", [_item(("4", "four"), ""), _item(("5",), ""), _item(("4",), "")])
    assert floors["floor/chance/t/0shot/accuracy"] == pytest.approx(2 / 3)  # "four" is normalised to "4"
    assert _any_match("Four.", ["4"]) == 1.0 and _any_match("5", ["4", "four"]) == 0.0


def _item(references: tuple[str, ...], category: str):
    from mm1core.eval.file_tasks import TaskItem

    return TaskItem(None, "q", references, category)


def test_metric_names_families_and_headlines():
    assert metric_family("digits/4shot/vqa/parity") == "digits/4shot"
    assert metric_family("4shot/vqa/color") == "4shot" and metric_family("textcore/avg") == "textcore"
    tasks = [{"name": "world", "kind": "world"}, {"name": "dv", "kind": "vqa", "shots": [0, 2]}]
    recorded = scored_metrics([0, 4], tasks)
    assert "0shot/vqa" in recorded and "dv/2shot/vqa" in recorded and "dv/4shot/vqa" not in recorded
    files_only = scored_metrics([0], [{"name": "dc", "kind": "caption"}])
    assert files_only == ("dc/0shot/cider", "dc/0shot/bleu4")
    assert file_task_headlines(["0shot/avg", "dc/0shot/cider", "dc/0shot/bleu4", "dv/4shot/vqa/parity"]) == [
        "dc/0shot/cider"
    ]


def test_a_files_digest_covers_their_contents(tmp_path):
    path = tmp_path / "t.parquet"
    write_documents(path, "task:text", [{"prompt": "one plus one is", "answers": ["2"]}])
    before = _files_digest(str(path))
    _files_digest.cache_clear()
    write_documents(path, "task:text", [{"prompt": "one plus one is", "answers": ["3"]}])
    assert _files_digest(str(path)) != before


def test_a_study_of_the_world_cannot_score_words_it_never_learned(tmp_path, write_study):
    write_documents(
        tmp_path / "q.parquet",
        "task:vqa",
        [{"image": _png("red"), "question": "which hue is this ?", "answers": ["crimson"]}],
    )
    study = write_study(
        """
        name: unknown-words
        reference:
          preset: tiny
          overrides:
            eval.tasks:
              - name: world
              - name: hues
                kind: vqa
                files: q.parquet
                shots: [0]
        seeds: [0]
        """
    )
    result = run_cli("plan", str(study), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "study.yaml:5: reference.overrides.eval.tasks: task 'hues': item text 'which hue is this ?'"
        in result.stderr
    )
    assert "word 'which' is not in the vocabulary" in result.stderr


def test_a_broken_task_file_stops_the_plan_at_its_line(tmp_path, write_study, digits):
    rows = read_task_rows(digits / "vqa-task.parquet", "vqa")[:10]
    rows[3]["answers"] = []
    write_documents(tmp_path / "broken.parquet", "task:vqa", rows)
    study = write_study(
        """
        name: broken-task
        reference:
          preset: tiny
          overrides:
            eval.tasks:
              - name: world
              - name: digits
                kind: vqa
                files: broken.parquet
                shots: [0]
        seeds: [0]
        """
    )
    result = run_cli("plan", str(study), cwd=tmp_path.parent)  # relative to the study file, not the cwd
    assert result.returncode == 2
    assert (
        "study.yaml:9: reference.overrides.eval.tasks[1].files: "
        f"{tmp_path / 'broken.parquet'}: row 3 (0-based): column 'answers': empty list" in result.stderr
    )


FILES_ONLY = """
name: digits-files-only
reference:
  preset: tiny
  overrides:
    encoder_pretrain.loss: none
    lm.positions: rope
    train.steps: 40
    data.caption_files: data/captions.parquet
    data.interleaved_files: data/pages.parquet
    data.text_files: data/text.parquet
    data.ratio: "5:5:1"
    data.bpe_vocab_size: 300
    eval.tasks:
      - {name: dcap, kind: caption, files: data/caption-task.parquet, split: test, demos_split: train, shots: [0, 4], max_items: 20, plays: caption}
      - {name: dvqa, kind: vqa, files: data/vqa-task.parquet, split: test, demos_split: train, shots: [0, 4], max_items: 40, plays: vqa}
      - {name: dtext, kind: text, files: data/text-task.parquet, split: test, demos_split: train, shots: [0, 4]}
axes:
  - name: image_tokens
    values: [4, 16]
seeds: [0, 1]
resources: {cpu: 1}
"""


@pytest.mark.slow
def test_a_study_on_files_alone_is_trained_scored_and_reported(tmp_path, digits):
    shutil.copytree(digits, tmp_path / "data")
    (tmp_path / "study.yaml").write_text(FILES_ONLY.lstrip())
    done = run_cli("run", "study.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study_dir = tmp_path / "results" / "digits-files-only"
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert (trials["status"] == "finished").all() and len(trials) == 4
    assert schema.axis_columns(trials.columns) == ["image_tokens"]
    for metric in ("dcap/0shot/cider", "dcap/4shot/bleu4", "dvqa/4shot/vqa/parity", "dtext/4shot/accuracy"):
        assert trials[metric].between(0, 10).all()
    # No generated world anywhere: no world metric, no held-out world documents, no probes of world scenes.
    assert not [c for c in trials.columns if c.startswith(("0shot/", "textcore/", "heldout/", "probe/"))]
    assert {"protocol/dvqa/0shot", "protocol/dvqa/4shot", "protocol/dcap/0shot"} <= set(trials.columns)
    protocols = json.loads(trials["eval_protocol_json"].iloc[0])
    assert protocols["dvqa/4shot"]["items"] == 40 and len(protocols["dvqa/4shot"]["files_sha256"]) == 16
    items = pd.read_parquet(study_dir / "items.parquet")
    per_trial = items[items["metric"] == "dvqa/0shot/vqa"].groupby("trial_id")["item_id"].nunique()
    assert (per_trial == 40).all()
    # The report: the file tasks' 0- and 4-shot scores with intervals over seeds, compared item by item.
    summary = (study_dir / "summary.md").read_text()
    assert "| arm | seeds | dcap/0shot/cider | dcap/4shot/cider |" in summary
    assert "dvqa/4shot/vqa" in summary and " ± " in summary
    assert "| image_tokens=16 | dvqa/0shot/vqa |" in summary  # the comparison with the reference arm
    assert "F5" in summary  # the VQA task plays the paper's VQA column: the visual-token finding speaks
    report = (study_dir / "report.html").read_text()
    assert "dtext/4shot/accuracy" in report
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits-files-only")
    children = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mm1ablate.role") == "trial"
    ]
    assert len(children) == 4 and all("dvqa/4shot/vqa" in r.data.metrics for r in children)
    # The tokenizer was trained on the files' text alone: nothing of the world's.
    cfg = config_from_dict(json.loads(trials["config_json"].iloc[0]))
    assert not uses_world_text(cfg)


def test_calibration_cuts_file_tasks_by_the_share_it_cuts_the_worlds_items(digits):
    from mm1core.calibrate import shrunk

    task = {
        "name": "dv",
        "kind": "vqa",
        "files": str(digits / "vqa-task.parquet"),
        "split": "test",
        "shots": [0],
    }
    tree = apply_overrides(config_to_dict(get_preset("small")), {"eval.tasks": [{"name": "world"}, task]})
    tasks = shrunk(tree)["eval"]["tasks"]
    test_rows = len(read_task_rows(task["files"], "vqa", split="test"))
    assert tasks[0] == {"name": "world"} and shrunk(tree)["eval"]["num_items"] == 100  # of the world's 700
    assert tasks[1]["max_items"] == round(test_rows * 100 / 700)


def test_a_missing_task_file_is_said_once_even_when_its_demonstrations_come_from_it(tmp_path, write_study):
    study = write_study(
        """
        name: missing-task
        reference:
          preset: tiny
          overrides:
            eval.tasks:
              - {name: digits, kind: vqa, files: gone.parquet, split: test, demos_split: train}
        seeds: [0]
        """
    )
    result = run_cli("plan", str(study), cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "gone.parquet" in line]
    assert lines == [
        f"{study}:6: reference.overrides.eval.tasks[0].files: {tmp_path / 'gone.parquet'}: no such file"
    ]


def test_arms_scored_on_different_task_files_are_never_compared(tmp_path):
    from dashboards.provenance import comparable_items
    from mm1core.eval.protocol import protocol_fingerprints

    def protocol(answer: str) -> dict[str, str]:
        path = tmp_path / f"{answer}.parquet"
        write_documents(path, "task:text", [{"prompt": "one plus one is", "answers": [answer]}])
        return protocol_fingerprints(
            {"sums/0shot": {"task": "sums", "files_sha256": _files_digest(str(path))}}
        )

    same, other = protocol("2"), protocol("3")
    assert same != other
    trials = pd.DataFrame(
        [
            {"trial_id": "a", "arm": "reference", "status": "finished", **same},
            {"trial_id": "b", "arm": "same-file", "status": "finished", **same},
            {"trial_id": "c", "arm": "other-file", "status": "finished", **other},
        ]
    )
    items = pd.DataFrame(
        [
            {"trial_id": t, "arm": a, "seed": 0, "metric": "sums/0shot/accuracy", "item_id": 0, "score": 1.0}
            for t, a in (("a", "reference"), ("b", "same-file"), ("c", "other-file"))
        ]
    )
    kept, notes = comparable_items(items, trials, "reference")
    assert set(kept["arm"]) == {"reference", "same-file"}
    assert notes and "other-file is not compared with reference on sums/0shot/*" in notes[0]
