"""Planning: design counts, ids that are stable across processes and distinct across configs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from ablations.plan import plan
from ablations.spec import REFERENCE_ARM, load_study

STUDY = """
name: p
reference:
  preset: tiny
axes:
  - name: resolution
    values: [16, 32, 64]
  - name: train.lr
    values: [0.003, 0.001]
design: {design}
seeds: [0, 1]
"""


def _plan(write_study, design: str, **replace: str):
    text = STUDY.format(design=design)
    for old, new in replace.items():
        text = text.replace(old, new)
    return plan(load_study(write_study(text)))


def test_grid_count(write_study):
    trials = _plan(write_study, "grid")
    assert len(trials) == 3 * 2 * 2
    assert len({t.arm for t in trials}) == 6


def test_one_at_a_time_count(write_study):
    # The tiny reference has resolution 32 and lr 0.003: those values are the reference arm itself.
    trials = _plan(write_study, "one_at_a_time")
    arms = sorted({t.arm for t in trials})
    assert arms == sorted([REFERENCE_ARM, "resolution=16", "resolution=64", "train.lr=0.001"])
    assert len(trials) == 4 * 2


def test_zip_count(write_study):
    trials = _plan(write_study, "zip", **{"[0.003, 0.001]": "[0.003, 0.002, 0.001]"})
    assert len(trials) == 3 * 2
    assert {t.arm for t in trials} == {
        "resolution=16,train.lr=0.003",
        "resolution=32,train.lr=0.002",
        "resolution=64,train.lr=0.001",
    }


def test_ids_distinct_for_distinct_configs(write_study):
    trials = _plan(write_study, "grid")
    assert len({t.trial_id for t in trials}) == len(trials)


def test_id_is_the_config_not_the_spelling(write_study):
    by_alias = _plan(write_study, "grid")
    by_path = _plan(
        write_study, "grid", **{"name: resolution": "name: encoder.resolution", "name: p": "name: q"}
    )
    assert [t.trial_id for t in by_alias] == [t.trial_id for t in by_path]


def test_ids_stable_across_processes(write_study):
    path = write_study(STUDY.format(design="grid"))
    here = [t.trial_id for t in plan(load_study(path))]
    code = (
        "import json, sys; from ablations import load_study, plan; "
        "print(json.dumps([t.trial_id for t in plan(load_study(sys.argv[1]))]))"
    )
    env_seed = {"PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**__import__("os").environ, **env_seed},
        check=True,
    )
    assert json.loads(out.stdout) == here


def test_seed_is_part_of_the_config(write_study):
    trials = _plan(write_study, "grid")
    first = [t for t in trials if t.arm == trials[0].arm]
    assert {t.seed for t in first} == {0, 1}
    assert first[0].config["seed"] != first[1].config["seed"]


def test_plan_says_which_encoders_are_built_and_reused(write_study, tmp_path):
    import torch

    from ablations.plan import encoder_plan
    from mm1core.stage_cache import encoder_stage_key
    from mm1core.storage import save_checked

    study = load_study(
        write_study(
            STUDY.format(design="grid").replace(
                "preset: tiny", "preset: tiny\n  overrides:\n    encoder_pretrain.loss: clip"
            )
        )
    )
    trials = plan(study)
    status = encoder_plan(trials, tmp_path)
    # 3 resolutions x 2 seeds need 6 encoders (each seed pre-trains its own); each is shared by the 2
    # learning-rate arms.
    assert sorted(status.values()).count("build") == 6 and sorted(status.values()).count("reuse") == 6
    entry = tmp_path / f"{encoder_stage_key(trials[0].config)}.pt"
    save_checked({"encoder": {"w": torch.zeros(64)}}, entry)
    status = encoder_plan(trials, tmp_path)
    assert list(status.values()).count("cached") == 2 and list(status.values()).count("build") == 5
    # A damaged entry (here: cut short, as by a full disk) is no cache hit: the plan says it will be rebuilt.
    entry.write_bytes(entry.read_bytes()[:100])
    status = encoder_plan(trials, tmp_path)
    assert list(status.values()).count("rebuild") == 1 and list(status.values()).count("cached") == 0
    shared = load_study(
        write_study(
            STUDY.format(design="grid").replace(
                "preset: tiny",
                "preset: tiny\n  overrides:\n    encoder_pretrain.loss: clip\n    encoder_pretrain.seed_from: stage",
            ),
            name="shared.yaml",
        )
    )
    status = encoder_plan(plan(shared), tmp_path / "empty")
    assert sorted(status.values()).count("build") == 3 and sorted(status.values()).count("reuse") == 9


def test_trials_that_build_an_encoder_are_scheduled_first(write_study):
    from ablations.plan import run_order
    from mm1core.stage_cache import encoder_stage_key

    text = STUDY.format(design="grid").replace(
        "preset: tiny", "preset: tiny\n  overrides:\n    encoder_pretrain.loss: clip"
    )
    trials = plan(load_study(write_study(text)))
    ordered = run_order(trials)
    assert sorted(t.trial_id for t in ordered) == sorted(t.trial_id for t in trials)
    keys = [encoder_stage_key(t.config) for t in ordered]
    distinct = len(set(keys))
    assert (
        len(set(keys[:distinct])) == distinct
    )  # every encoder's builder comes before any trial that reuses one


def test_encoder_size_sets_width_and_depth_together(write_study):
    from mm1core.presets import ENCODER_SIZES

    text = (
        STUDY.format(design="one_at_a_time")
        .replace("  - name: train.lr\n    values: [0.003, 0.001]\n", "")
        .replace(
            "name: resolution\n    values: [16, 32, 64]",
            "name: encoder_size\n    values: [vit-s-cpu, vit-h-cpu]",
        )
    )
    trials = plan(load_study(write_study(text)))
    by_arm = {t.arm: t.config["encoder"] for t in trials if t.seed == 0}
    assert set(by_arm) == {REFERENCE_ARM, "encoder_size=vit-s-cpu", "encoder_size=vit-h-cpu"}
    for size in ("vit-s-cpu", "vit-h-cpu"):
        encoder = by_arm[f"encoder_size={size}"]
        assert {k: encoder[k] for k in ("width", "depth", "num_heads")} == ENCODER_SIZES[size]
        assert encoder["resolution"] == by_arm[REFERENCE_ARM]["resolution"]


def test_imports_run_one_way():
    """ablations -> dashboards and mm1core, dashboards -> mm1core; never back (CONVENTIONS.md)."""
    import ast

    from conftest import REPO

    forbidden = {"mm1core": ("ablations", "dashboards"), "dashboards": ("ablations",)}
    wrong = []
    for package, banned in forbidden.items():
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                wrong += [f"{path.relative_to(REPO)} imports {n}" for n in names if n.split(".")[0] in banned]
    assert not wrong, wrong


def test_finished_trials_price_their_shape_once_each_and_past_a_busy_day(tmp_path):
    """The plan's rates from finished trials: a trial two studies hold counts once, trials slowed by load from
    outside their study do not set the rate, even when they are half of the shape's trials, and trials that ran on
    another CPU, with other threads, or recorded no CPU do not count at all, nor do resumed ones (their times are
    of their last go, a part of their steps)."""
    import pandas as pd

    from ablations.cost import _finished_rates, shape_key
    from mm1core.config import config_to_dict
    from mm1core.hardware import cpu_device_name, cpu_model_name
    from mm1core.presets import get_preset

    config = config_to_dict(get_preset("tiny"))
    steps = config["train"]["steps"]

    def row(trial_id: str, step_s: float, cpu: str | None = None, threads: int = 1) -> dict:
        return {
            "trial_id": trial_id,
            "status": "finished",
            "config_json": json.dumps(config),
            "time/encoder_s": 1.0,
            "time/train_s": step_s * steps,
            "time/data_s": 0.0,
            "time/eval_s": 2.0,
            "wall_time_s": step_s * steps + 4.0,
            "built_encoder": True,
            "device": cpu_device_name(threads),
            "cpu_model": cpu or cpu_model_name(),
        }

    calm = [row("calm0", 0.10), row("calm1", 0.11)]
    busy = [row("busy0", 0.35), row("busy1", 0.36)]
    elsewhere = [
        row("faster-cpu", 0.01, cpu="Another CPU"),
        row("two-threads", 0.02, threads=2),
        row("resumed-at-half", 0.05) | {"resumed": True},
    ]
    for study, rows in {
        "a": calm + busy + elsewhere,
        "b": busy,
        "c": busy,
    }.items():  # b, c adopted a's busy ones
        (tmp_path / study).mkdir()
        pd.DataFrame(rows).to_parquet(tmp_path / study / "trials.parquet")
    unrecorded = pd.DataFrame([row("before-cpu-models", 0.01)]).drop(columns="cpu_model")
    (tmp_path / "old").mkdir()
    unrecorded.to_parquet(tmp_path / "old" / "trials.parquet")
    shape = shape_key(config)
    finished = _finished_rates(tmp_path, {shape}, threads=1)[shape]
    assert finished.count == 4
    assert finished.quick["train_step_s"] == pytest.approx(0.11)
    assert finished.typical["train_step_s"] == pytest.approx((0.11 + 0.35) / 2)
    assert _finished_rates(tmp_path, {shape}, threads=2)[shape].count == 1


def test_a_resumed_trial_is_priced_at_what_is_left_of_it():
    """A run killed 75% into its multimodal stage resumes there, its encoder cached: the study's time counts a
    quarter of its training, all of its evaluation and start-up, and no encoder."""
    from ablations.cost import TRIAL_OVERHEAD_S, Estimate

    whole = Estimate(encoder_s=100.0, train_s=800.0, eval_s=60.0, fixed_s=10.0)
    left = whole.left(0.75)
    assert (left.encoder_s, left.train_s, left.eval_s, left.fixed_s) == (0.0, 200.0, 60.0, 10.0)
    assert left.total_s == 270.0 + TRIAL_OVERHEAD_S
    assert whole.left(0.0) == whole and whole.left(1.5).train_s == 0.0


def test_studies_side_by_side_fill_the_slot_a_study_leaves_idle(write_study):
    """Three studies of three equal trials each on 2 slots: one after another, each runs its last trial alone (2
    rounds a study, 6 in all); as one queue, 9 trials take 5 rounds."""
    from ablations.cost import STUDY_OVERHEAD_S, TRIAL_OVERHEAD_S, Estimate, _replay, side_by_side_wall

    trials = _plan(write_study, "grid", **{"[0.003, 0.001]": "[0.003]", "seeds: [0, 1]": "seeds: [0]"})
    assert len(trials) == 3
    trial = Estimate(encoder_s=0.0, train_s=98.0, eval_s=0.0, fixed_s=0.0)
    queue = [(t, trial, "cached") for t in trials]
    round_s = 98.0 + TRIAL_OVERHEAD_S
    one_after_another = sum(_replay(queue, slots=2) for _ in range(3))
    assert one_after_another == 6 * round_s
    assert side_by_side_wall([queue] * 3, slots=2, drivers=2) == 5 * round_s + 3 * STUDY_OVERHEAD_S / 2
    assert side_by_side_wall([queue], slots=2, drivers=2) == 2 * round_s + STUDY_OVERHEAD_S / 2


def test_a_calibrated_shape_is_priced_at_what_finished_trials_took_against_their_calibration(
    write_study, tmp_path, monkeypatch
):
    """Finished trials of one shape ran 1.5x and 2.5x the steps and 1.2x the items their shape's calibration said:
    a shape that only a calibration covers is priced at its calibration times the typical trial's ratios (2.0, the
    median, not the quick quartile's 1.5), and the plan says so."""
    import pandas as pd

    from ablations.cost import _calibration_prefix, estimate_study, eval_items, shape_key, slots_for
    from mm1core.hardware import cpu_device_name, cpu_model_name

    trials = _plan(write_study, "grid", **{"[0.003, 0.001]": "[0.003]", "[16, 32, 64]": "[16, 32]"})
    finished = next(t for t in trials if t.config["encoder"]["resolution"] == 16)
    priced = next(t for t in trials if t.config["encoder"]["resolution"] == 32)
    monkeypatch.setenv("MM1ABLATE_CALIBRATION", str(tmp_path / "calibration.json"))
    prefix = _calibration_prefix(threads=1, slots=slots_for(1))
    calibrated = {"encoder_step_s": 0.1, "train_step_s": 0.2, "eval_item_s": 0.05, "fixed_s": 3.0}
    (tmp_path / "calibration.json").write_text(
        json.dumps(
            {
                prefix + shape_key(finished.config): calibrated | {"measured": "2026-11-28"},
                prefix + shape_key(priced.config): calibrated | {"measured": "2026-11-28"},
            }
        )
    )
    config = finished.config
    steps, encoder_steps = config["train"]["steps"], config["encoder_pretrain"]["steps"]

    row = {
        "trial_id": finished.trial_id,
        "status": "finished",
        "config_json": json.dumps(config),
        "time/encoder_s": 0.1 * encoder_steps,  # as calibrated
        "time/train_s": 0.3 * steps,
        "time/data_s": 0.0,
        "time/eval_s": 0.06 * eval_items(config),
        "wall_time_s": 0.1 * encoder_steps + 0.3 * steps + 0.06 * eval_items(config) + 3.0,
        "built_encoder": True,
        "device": cpu_device_name(1),
        "cpu_model": cpu_model_name(),
    }
    results = tmp_path / "results"
    (results / "earlier").mkdir(parents=True)
    slower = row | {"trial_id": "slower", "time/train_s": 0.5 * steps}
    pd.DataFrame([row, slower]).to_parquet(results / "earlier" / "trials.parquet")

    estimate = estimate_study([priced], results_root=results, cpu_per_trial=1)
    got = estimate.trials[priced.trial_id]
    assert got.train_s == pytest.approx(0.2 * 2.0 * priced.config["train"]["steps"])
    assert got.eval_s == pytest.approx(0.05 * 1.2 * eval_items(priced.config))
    assert got.encoder_s == pytest.approx(0.1 * priced.config["encoder_pretrain"]["steps"])
    assert (
        "against their calibration (1 shape: encoder_step_s x1.00, train_step_s x2.00, eval_item_s x1.20)"
        in estimate.sources[0]
    )

    # Trials that ran on another CPU say nothing about this machine's calibration.
    pd.DataFrame([row | {"cpu_model": "Another CPU"}]).to_parquet(results / "earlier" / "trials.parquet")
    unscaled = estimate_study([priced], results_root=results, cpu_per_trial=1)
    assert unscaled.trials[priced.trial_id].train_s == pytest.approx(0.2 * priced.config["train"]["steps"])
    assert "scaled" not in unscaled.sources[0]

    # Nor do trials that waited for their CPU: 0.52 of it, as two of the findings suite's trials got beside the
    # test suite, which had doubled the next plan of the whole suite. With its CPU to itself the same trial counts.
    for share, scaled in ((0.52, False), (0.95, True)):
        cpu_s = share * row["wall_time_s"]
        pd.DataFrame([row | {"cost/cpu_s": cpu_s}, slower | {"cost/cpu_s": cpu_s}]).to_parquet(
            results / "earlier" / "trials.parquet"
        )
        got = estimate_study([priced], results_root=results, cpu_per_trial=1)
        assert ("scaled" in got.sources[0]) is scaled, got.sources
        ratio = 2.0 if scaled else 1.0
        assert got.trials[priced.trial_id].train_s == pytest.approx(
            0.2 * ratio * priced.config["train"]["steps"]
        )


def test_an_encoder_an_earlier_study_of_the_suite_builds_is_priced_as_cached(
    write_study, tmp_path, monkeypatch
):
    """A suite's plan prices each study as it will find the stage cache: an encoder that an earlier study of the
    suite builds costs a later one nothing."""
    from ablations.cost import _calibration_prefix, estimate_study, shape_key, slots_for
    from mm1core.stage_cache import encoder_stage_key

    pretrained = "preset: tiny\n  overrides:\n    encoder_pretrain.loss: clip"
    [trial] = _plan(
        write_study,
        "grid",
        **{"[16, 32, 64]": "[32]", "[0.003, 0.001]": "[0.003]", "[0, 1]": "[0]", "preset: tiny": pretrained},
    )
    monkeypatch.setenv("MM1ABLATE_CALIBRATION", str(tmp_path / "calibration.json"))
    rates = {
        "encoder_step_s": 0.5,
        "train_step_s": 0.2,
        "eval_item_s": 0.05,
        "fixed_s": 3.0,
        "measured": "today",
    }
    prefix = _calibration_prefix(threads=1, slots=slots_for(1))
    (tmp_path / "calibration.json").write_text(json.dumps({prefix + shape_key(trial.config): rates}))
    alone = estimate_study([trial], results_root=tmp_path / "results", cpu_per_trial=1)
    after = estimate_study(
        [trial],
        results_root=tmp_path / "results",
        cpu_per_trial=1,
        encoders_built_before={encoder_stage_key(trial.config)},
    )
    encoder_s = 0.5 * trial.config["encoder_pretrain"]["steps"]
    assert encoder_s > 0 and alone.wall_s - after.wall_s == pytest.approx(encoder_s)
