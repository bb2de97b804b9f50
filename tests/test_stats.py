"""Report statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboards.stats import compare_to_reference, holm, mean_ci, paired_comparison


def _items(scores: dict[str, np.ndarray], metric: str = "0shot/vqa") -> pd.DataFrame:
    """scores[arm] (seeds, items) -> the long items table the evaluation writes."""
    rows = []
    for arm, grid in scores.items():
        for seed, row in enumerate(grid):
            rows += [
                {"arm": arm, "seed": seed, "metric": metric, "item_id": i, "score": s}
                for i, s in enumerate(row)
            ]
    return pd.DataFrame(rows)


def test_mean_ci_is_the_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sd 1, sem 1/sqrt(3), t(0.975, 2) = 4.302653
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([5.0])[0] == 5.0


def test_a_known_paired_difference_is_found():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=(2, 200))  # item difficulty varies a lot...
    noise = rng.normal(0, 0.02, size=(2, 200))
    items = _items({"ref": base, "better": base + 0.05 + noise})  # ...but the pairs differ by 0.05
    c = paired_comparison(items, "better", "ref", "0shot/vqa")
    d = (base + 0.05 + noise - base).ravel()
    assert c.pairs == 400 and c.delta == pytest.approx(d.mean())
    half = 1.9659 * d.std(ddof=1) / math.sqrt(400)  # t(0.975, 399)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-3)
    assert c.p_value < 1e-10
    table = compare_to_reference(items, "ref", ["0shot/vqa"])
    assert table.loc[0, "verdict"] == "better"


def test_the_null_case_finds_nothing():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, size=(3, 100))
    same = _items({"ref": base, "same": base.copy()})
    c = paired_comparison(same, "same", "ref", "0shot/vqa")
    assert c.delta == 0 and c.p_value == 1.0
    shuffled = _items({"ref": base, "other": rng.permutation(base.ravel()).reshape(3, 100)})
    assert (
        compare_to_reference(shuffled, "ref", ["0shot/vqa"]).loc[0, "verdict"] == "no detectable difference"
    )


def test_pairs_are_matched_by_seed_and_item_not_by_order():
    items = _items({"ref": np.array([[0.0, 1.0]]), "arm": np.array([[1.0, 1.0]])})
    shuffled = items.sample(frac=1.0, random_state=3)
    c = paired_comparison(shuffled, "arm", "ref", "0shot/vqa")
    assert c.pairs == 2 and c.delta == 0.5


def test_holm_on_a_known_vector():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> made monotone: 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, float("nan"), 0.01])
    assert (
        adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    )


def test_holm_can_turn_a_nominal_difference_into_no_detectable_difference():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, size=(1, 60))
    arms = {"ref": base}
    for k in range(10):  # ten arms with a small true effect: nominally significant, not all after correction
        arms[f"arm{k}"] = base + rng.normal(0.03, 0.1, size=base.shape)
    table = compare_to_reference(_items(arms), "ref", ["0shot/vqa"])
    assert (table["p_holm"] >= table["p_value"]).all()
    assert (table["p_value"] < 0.05).sum() > (table["p_holm"] < 0.05).sum()
