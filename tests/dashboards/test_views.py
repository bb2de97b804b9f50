"""The paper's views from results tables generated in the test by a known process: rows, bars and fitted laws."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from dashboards.report import write_report
from dashboards.views import connector_figure, data_figure, encoder_table, lr_law


def _trials(axes: dict[str, list], score, seeds=(0, 1, 2)) -> pd.DataFrame:
    """One finished trial per arm and seed; each metric = score(values) + small seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        arm = ",".join(f"{a}={v}" for a, v in point.items())
        for seed in seeds:
            base = score(point)
            metrics = {
                m: base + k * 0.1 + rng.normal(0, 0.01)
                for k, m in enumerate(("0shot/avg", "4shot/avg", "8shot/avg"))
            }
            rows.append(
                {
                    "trial_id": f"{arm}/{seed}",
                    "arm": arm,
                    "seed": seed,
                    "status": "finished",
                    **point,
                    **metrics,
                    "textcore/avg": 0.3 + rng.normal(0, 0.01),
                }
            )
    return pd.DataFrame(rows)


def test_encoder_table_has_a_row_per_encoder_setting():
    trials = _trials(
        {"encoder_loss": ["aim", "clip"], "resolution": [32, 64]}, lambda p: p["resolution"] / 100
    )
    table = encoder_table(trials, ["encoder_loss", "resolution"])
    assert list(zip(table["encoder_loss"], table["resolution"], strict=True)) == [
        ("aim", 32),
        ("aim", 64),
        ("clip", 32),
        ("clip", 64),
    ]
    assert (table["seeds"] == 3).all()
    assert table["0shot/avg mean"].tolist() == pytest.approx([0.32, 0.64, 0.32, 0.64], abs=0.03)
    assert {"4shot/avg ci95", "8shot/avg mean", "textcore/avg mean"} <= set(table.columns)
    assert encoder_table(trials, ["connector"]) is None  # no encoder axis: no table


def test_connector_figure_groups_bars_by_tokens_and_resolution_per_shot_count():
    trials = _trials(
        {
            "connector": ["avg-pool", "attn-pool", "c-abstractor"],
            "image_tokens": [16, 64],
            "resolution": [32, 64],
        },
        lambda p: p["image_tokens"] / 100,
    )
    fig = connector_figure(trials, ["connector", "image_tokens", "resolution"])
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4 * 3  # 2 token counts x 2 resolutions, in each of 3 shot panels
    assert {t.name for t in bars} == {f"image_tokens={k}, resolution={r}" for k in (16, 64) for r in (32, 64)}
    assert all(list(t.x) == ["attn-pool", "avg-pool", "c-abstractor"] for t in bars)
    high = next(t for t in bars if t.name.startswith("image_tokens=64") and t.xaxis == "x")
    assert list(high.y) == pytest.approx([0.64] * 3, abs=0.03)
    assert [a.text for a in fig.layout.annotations] == ["0shot/avg", "4shot/avg", "8shot/avg"]


def test_data_figure_has_the_paper_panels_the_settings_allow():
    ratios = ["1:0:0", "5:5:0", "0:1:0", "5:5:1"]
    trials = _trials({"data_ratio": ratios}, lambda p: ratios.index(p["data_ratio"]) / 10)
    fig = data_figure(trials, ["data_ratio"])
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [
        "(a) caption / interleaved",
        "(b) with / without text-only",
        "(c) image / text",
        "all settings of data_ratio",
    ]
    by_panel = {}
    for trace in fig.data:
        by_panel.setdefault(trace.xaxis, {})[trace.name] = trace
    caption_panel = by_panel["x"]
    assert list(caption_panel["0shot/avg"].x) == ["100/0", "50/50", "0/100"]
    assert list(caption_panel["0shot/avg"].y) == pytest.approx([0.0, 0.1, 0.2], abs=0.03)
    assert list(by_panel["x2"]["textcore/avg"].x) == ["5:5:0 (no text)", "5:5:1 (with text)"]
    assert list(by_panel["x3"]["8shot/avg"].x) == ["100/0", "91/9"]
    assert set(by_panel["x4"]) == {"textcore/avg", "0shot/avg", "4shot/avg", "8shot/avg"}
    # The study of the done-when (caption-only, interleaved-only, 5:5:1) gets panel (a) and all settings.
    three = _trials({"data_ratio": ["1:0:0", "0:1:0", "5:5:1"]}, lambda p: 0.5)
    assert [a.text for a in data_figure(three, ["data_ratio"]).layout.annotations] == [
        "(a) caption / interleaved",
        "all settings of data_ratio",
    ]


def test_lr_law_recovers_the_law_the_results_were_made_with():
    a, b = -0.5, 1.0  # the optimum of size N is exp(a ln N + b)
    rows = []
    for size in (10**5, 10**6, 10**7):
        best = math.exp(a * math.log(size) + b)
        for lr in best * np.geomspace(0.1, 10, 7):
            for seed in (0, 1):
                loss = 1.0 + 0.05 * math.log(lr / best) ** 2
                rows.append(
                    {
                        "trial_id": f"{size}/{lr}/{seed}",
                        "arm": f"lr={lr}",
                        "seed": seed,
                        "status": "finished",
                        "train.lr": lr,
                        "num_params": size,
                        "heldout/loss": loss,
                    }
                )
    fig, numbers = lr_law(pd.DataFrame(rows), ["train.lr"])
    assert (numbers["fit"]["a"], numbers["fit"]["b"]) == pytest.approx((a, b), abs=1e-6)
    assert numbers["paper"] == {"a": -0.4214, "b": -0.5535}
    assert {t.name for t in fig.data} >= {
        "optimum per size",
        "paper: a=-0.4214, b=-0.5535",
        "ours: a=-0.500, b=1.000",
    }


def test_the_report_carries_the_views_its_axes_allow(tmp_path):
    trials = _trials(
        {"encoder_loss": ["aim", "clip"], "connector": ["avg-pool", "c-abstractor"]}, lambda p: 0.5
    )
    study_dir = tmp_path / "enc"
    study_dir.mkdir()
    trials.to_parquet(study_dir / "trials.parquet")
    page = write_report(study_dir).read_text()
    assert "Encoder table (paper Table 1)" in page and "paper Figure 4" in page
    assert "paper Figure 5" not in page and "Learning-rate law" not in page


def test_every_view_a_finding_names_is_registered():
    from dashboards.findings import load_findings
    from dashboards.views import VIEWS

    named = {finding["view"] for finding in load_findings() if "view" in finding}
    assert named and named <= set(VIEWS)
    assert all(callable(VIEWS.load(name)) for name in VIEWS)
