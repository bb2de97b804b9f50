"""Report statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboards.stats import compare_to_reference, fit_runs, holm, mean_ci, paired_comparison


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


def test_a_known_paired_difference_is_found_over_seeds():
    rng = np.random.default_rng(0)
    seeds, items = 5, 200
    base = rng.uniform(0, 1, size=(seeds, items))  # item difficulty varies a lot...
    run_shift = rng.normal(0, 0.01, size=(seeds, 1))  # ...each training run lands a little apart...
    noise = rng.normal(0, 0.02, size=(seeds, items))
    table = _items({"ref": base, "better": base + 0.05 + run_shift + noise})  # ...and the arm is 0.05 better
    c = paired_comparison(table, "better", "ref", "0shot/vqa")
    d = 0.05 + run_shift[:, 0] + noise.mean(axis=1)  # one difference per seed: the replications
    assert c.seeds == 5 and c.pairs == seeds * items and c.delta == pytest.approx(d.mean())
    # Two arms, seed blocks, no arm x item interaction: the paired t-test over seeds, on 4 degrees of freedom.
    half = 2.776445 * d.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert c.df == 4
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-6)
    assert c.run_sd == pytest.approx(d.std(ddof=1) / math.sqrt(2))  # a run's spread, not a difference's
    assert c.p_value < 0.01
    assert compare_to_reference(table, "ref", ["0shot/vqa"]).loc[0, "verdict"] == "better"


def test_many_items_cannot_make_two_runs_certain():
    """The old item-level test called this "better" at p ~ 1e-20: 1,000 items per run, but only two runs, whose
    run-to-run spread is as large as the difference."""
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 1, size=(2, 1000))
    shifted = base + np.array([[0.06], [-0.01]]) + rng.normal(0, 0.01, size=base.shape)
    c = paired_comparison(_items({"ref": base, "arm": shifted}), "arm", "ref", "0shot/vqa")
    assert c.seeds == 2 and c.p_value > 0.05
    verdict = compare_to_reference(_items({"ref": base, "arm": shifted}), "ref", ["0shot/vqa"])
    assert verdict.loc[0, "verdict"] == "no detectable difference"
    assert c.detectable > abs(c.delta) and c.seeds_needed > 2


def test_one_seed_gives_an_estimate_and_no_verdict():
    base = np.random.default_rng(5).uniform(0, 1, size=(1, 300))
    table = compare_to_reference(_items({"ref": base, "arm": base + 0.2}), "ref", ["0shot/vqa"])
    row = table.loc[0]
    assert row["delta"] == pytest.approx(0.2) and row["seeds"] == 1
    assert math.isnan(row["p_value"]) and row["verdict"] == "estimate only (one seed)"


def test_detectable_difference_and_seeds_needed_agree():
    """The smallest detectable difference shrinks with seeds, and the seeds it takes to detect a difference are the
    first count whose detectable difference reaches it."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, size=(3, 400))
    table = _items(
        {
            "ref": base + rng.normal(0, 0.03, size=(3, 1)) + rng.normal(0, 0.1, size=base.shape),
            "arm": base + 0.02 + rng.normal(0, 0.03, size=(3, 1)) + rng.normal(0, 0.1, size=base.shape),
        }
    )
    model = fit_runs(table, "0shot/vqa")
    c = paired_comparison(table, "arm", "ref", "0shot/vqa")
    assert c.detectable == pytest.approx(model._reach(2.0, 3))
    reach = model._reach(2.0, np.arange(2, 40))
    assert (np.diff(reach) < 0).all()
    n = int(c.seeds_needed)
    assert model._reach(2.0, n) <= abs(c.delta) < model._reach(2.0, n - 1)


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
    items = _items({"ref": np.array([[0.0, 1.0], [1.0, 0.0]]), "arm": np.array([[1.0, 1.0], [1.0, 1.0]])})
    shuffled = items.sample(frac=1.0, random_state=3)
    c = paired_comparison(shuffled, "arm", "ref", "0shot/vqa")
    assert c.pairs == 4 and c.seeds == 2 and c.delta == pytest.approx(0.5)


def test_holm_on_a_known_vector():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> made monotone: 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, float("nan"), 0.01])
    assert (
        adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    )


def test_holm_can_turn_a_nominal_difference_into_no_detectable_difference():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, size=(4, 60))
    arms = {"ref": base}
    for k in range(10):  # ten arms with a small true effect: nominally significant, not all after correction
        arms[f"arm{k}"] = base + rng.normal(0.03, 0.02, size=(4, 1)) + rng.normal(0, 0.05, size=base.shape)
    table = compare_to_reference(_items(arms), "ref", ["0shot/vqa"])
    assert (table["p_holm"] >= table["p_value"]).all()
    assert (table["p_value"] < 0.05).sum() > (table["p_holm"] < 0.05).sum()


def test_trend_over_three_arms_is_tested_run_by_run():
    from dashboards.stats import trend_comparison

    rng = np.random.default_rng(6)
    base = rng.uniform(0, 1, size=(4, 150))
    runs = rng.normal(0, 0.005, size=(3, 4, 1))
    rising = {f"r{k}": base + 0.04 * k + runs[k] for k in range(3)}  # +0.04 per step: +0.08 first to last
    c = trend_comparison(_items(rising), ["r0", "r1", "r2"], "0shot/vqa")
    assert c.seeds == 4 and c.delta == pytest.approx(0.08, abs=0.01) and c.p_value < 0.01
    flat = {f"r{k}": base + runs[k] for k in range(3)}
    assert trend_comparison(_items(flat), ["r0", "r1", "r2"], "0shot/vqa").p_value > 0.05
    # A rise that comes back down has no trend, though its middle arm beats both ends.
    peaked = {"r0": base, "r1": base + 0.1, "r2": base}
    assert abs(trend_comparison(_items(peaked), ["r0", "r1", "r2"], "0shot/vqa").delta) < 1e-9


def test_equivalence_needs_the_interval_inside_the_margin():
    from dashboards.stats import equivalent

    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, size=(6, 200))
    close = _items({"ref": base, "arm": base + 0.002 + rng.normal(0, 0.002, size=(6, 1))})
    assert equivalent(paired_comparison(close, "arm", "ref", "0shot/vqa"), margin=0.02)
    noisy = _items({"ref": base, "arm": base + rng.normal(0, 0.03, size=(6, 1))})
    assert not equivalent(paired_comparison(noisy, "arm", "ref", "0shot/vqa"), margin=0.02)
    one_seed = _items({"ref": base[:1], "arm": base[:1]})
    assert not equivalent(paired_comparison(one_seed, "arm", "ref", "0shot/vqa"), margin=0.02)


def test_runs_that_agree_by_chance_are_no_more_certain_than_their_items_allow():
    """Three runs whose mean differences agree exactly, each made of many items that moved both ways: the run
    spread cannot be smaller than the item sample puts into each run's mean (the A/A study's false "better")."""
    rng = np.random.default_rng(9)
    ref = (rng.uniform(size=(3, 700)) < 0.5).astype(float)
    arm = ref.copy()
    for seed in range(3):
        zeros, ones = np.flatnonzero(ref[seed] == 0), np.flatnonzero(ref[seed] == 1)
        arm[seed, rng.choice(zeros, 100, replace=False)] = 1.0  # +100 items
        arm[seed, rng.choice(ones, 86, replace=False)] = 0.0  # -86 items: +14 / 700 = +0.02 in every run
    c = paired_comparison(_items({"ref": ref, "arm": arm}), "arm", "ref", "0shot/vqa")
    assert c.delta == pytest.approx(0.02) and c.seeds == 3
    # Nothing beyond the items moves the runs apart: the spread of a run's mean is what its 700 items put into it.
    item_sampling = np.sqrt(((arm - ref).var(axis=1, ddof=1) / 700).mean() / 2)
    assert c.run_sd == pytest.approx(item_sampling, rel=0.05)
    assert c.p_value > 0.05


def test_the_item_sample_is_a_sample_too():
    """An arm that wins on the same 100 items and loses on the same 86 in every seed: the runs agree perfectly, so a
    test over seeds alone calls +0.02 certain, but another 700 items would move it as much as it is; no number of
    seeds settles it."""
    rng = np.random.default_rng(10)
    ref = np.tile((rng.uniform(size=700) < 0.5).astype(float), (5, 1))
    arm = ref.copy()
    zeros, ones = np.flatnonzero(ref[0] == 0), np.flatnonzero(ref[0] == 1)
    arm[:, rng.choice(zeros, 100, replace=False)] = 1.0
    arm[:, rng.choice(ones, 86, replace=False)] = 0.0
    c = paired_comparison(_items({"ref": ref, "arm": arm}), "arm", "ref", "0shot/vqa")
    assert c.delta == pytest.approx(0.02) and c.seeds == 5
    assert c.p_value > 0.05 and c.ci_low < 0 < c.ci_high
    assert math.isnan(c.seeds_needed)


def test_more_arms_pool_the_run_level_error():
    """A third arm adds degrees of freedom to the error term of every comparison (the mixed model's run variance),
    and seed effects shared by all arms cancel."""
    rng = np.random.default_rng(11)
    base = rng.uniform(0, 1, size=(3, 400))
    seed_effect = rng.normal(0, 0.2, size=(3, 1))  # one seed lifts every arm alike
    arms = {f"a{k}": base + seed_effect + rng.normal(0, 0.01, size=(3, 1)) for k in range(3)}
    arms["a2"] = arms["a2"] + 0.05
    two = paired_comparison(_items({k: arms[k] for k in ("a0", "a2")}), "a2", "a0", "0shot/vqa")
    three = paired_comparison(_items(arms), "a2", "a0", "0shot/vqa")
    assert (two.df, three.df) == (2, 4)
    assert two.delta == pytest.approx(three.delta, abs=0.02) and three.delta == pytest.approx(0.05, abs=0.02)
    assert three.run_sd < 0.05  # the seed effect (SD 0.2) is not run-to-run error
    assert three.p_value < 0.05


def test_a_seed_that_not_every_arm_ran_is_left_out():
    rng = np.random.default_rng(12)
    base = rng.uniform(0, 1, size=(4, 300))
    table = _items({"ref": base, "arm": base + 0.1 + rng.normal(0, 0.01, size=(4, 1))})
    lost = table[~((table["arm"] == "arm") & (table["seed"] == 3))]
    c = paired_comparison(lost, "arm", "ref", "0shot/vqa")
    assert c.seeds == 3 and c.df == 2 and c.delta == pytest.approx(0.1, abs=0.02) and c.p_value < 0.01


def test_two_runs_that_agree_are_no_more_than_one_degree_of_freedom():
    """Two arms that answer different items (a large arm x item interaction), two seeds whose run terms came out
    low: Satterthwaite's df from the observed mean squares was the items' (531 on the long-connector runs, p 1e-58).
    Two seeds give one run-level degree of freedom, and the verdict cannot rest on more."""
    rng = np.random.default_rng(13)
    base = rng.uniform(0, 1, size=700)
    strengths = rng.normal(0, 0.3, size=700)  # the arm is better on some items, worse on others
    ref = base + rng.normal(0, 0.25, size=(2, 700))
    arm = base + strengths + 0.1 + rng.normal(0, 0.25, size=(2, 700))
    c = paired_comparison(_items({"ref": ref, "arm": arm}), "arm", "ref", "0shot/vqa")
    assert c.seeds == 2 and c.df == 1
    assert c.p_value > 0.05 and c.ci_low < 0.1 < c.ci_high


def test_identical_recipes_with_item_interaction_are_called_different_at_most_at_the_nominal_rate():
    """Null studies, 2 arms x 3 seeds x 300 items: each run lands apart (SD 0.04) and the arms differ item by item
    with no difference on average over the item population. With Satterthwaite's df alone, 20 of these 300 were
    called "better" or "worse"."""
    rng = np.random.default_rng(14)
    calls = 0
    studies = 300
    for _ in range(studies):
        base = rng.uniform(0, 1, size=300)
        strengths = rng.normal(0, 0.3, size=300)
        ref = base + rng.normal(0, 0.04, size=(3, 1)) + rng.normal(0, 0.25, size=(3, 300))
        arm = base + strengths + rng.normal(0, 0.04, size=(3, 1)) + rng.normal(0, 0.25, size=(3, 300))
        calls += paired_comparison(_items({"ref": ref, "arm": arm}), "arm", "ref", "0shot/vqa").p_value < 0.05
    assert calls / studies <= 0.05
