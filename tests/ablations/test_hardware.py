"""`train.precision: auto`: resolved at plan time from the hardware, so the precision is part of a trial's id."""

from __future__ import annotations

from ablations.plan import plan
from ablations.spec import load_study
from mm1core.hardware import cpu_has_bf16_units, resolve_precision

STUDY = """
name: p
reference:
  preset: tiny
  overrides:
    train.precision: {precision}
seeds: [0]
resources: {{cpu: 1, gpu: {gpu}}}
"""


def test_explicit_precision_is_kept_and_a_gpu_gets_bf16():
    assert resolve_precision("fp32", gpu=True) == "fp32"
    assert resolve_precision("bf16", gpu=False) == "bf16"
    assert resolve_precision("auto", gpu=True) == "bf16"
    assert resolve_precision("auto", gpu=False) == ("bf16" if cpu_has_bf16_units() else "fp32")


def test_plan_resolves_auto_into_the_trial_config_and_its_id(write_study):
    def planned(precision: str, gpu: float):
        (trial,) = plan(load_study(write_study(STUDY.format(precision=precision, gpu=gpu))))
        return trial

    cpu_auto = planned("auto", 0)
    expected = "bf16" if cpu_has_bf16_units() else "fp32"
    assert cpu_auto.config["train"]["precision"] == expected
    assert cpu_auto.trial_id == planned(expected, 0).trial_id
    gpu_auto = planned("auto", 1)
    assert gpu_auto.config["train"]["precision"] == "bf16"
    assert gpu_auto.trial_id != planned("fp32", 1).trial_id


def test_plan_says_which_precision_the_trials_get_and_why(write_study, tmp_path):
    from conftest import run_cli

    path = write_study(STUDY.format(precision="auto", gpu=0))
    out = run_cli("plan", str(path), cwd=tmp_path, timeout=120).stdout
    expected = "bf16" if cpu_has_bf16_units() else "fp32"
    assert f"precision: {expected} (auto: this CPU" in out
    gpu = run_cli(
        "plan", str(write_study(STUDY.format(precision="auto", gpu=1), name="g.yaml")), cwd=tmp_path
    )
    assert "precision: bf16 (auto: trials get a GPU)" in gpu.stdout
