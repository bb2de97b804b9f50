"""Scorers on hand-made predictions whose scores are known: CIDEr-D against pycocoevalcap, VQA accuracy by hand."""

from __future__ import annotations

import pytest
from pycocoevalcap.cider.cider import Cider

from mm1core.eval.scoring import cider, exact_match, normalize_answer, vqa_accuracy

REFERENCES = {
    "scene0": ["a big red circle on the left", "big red circle left", "a red circle on the left side"],
    "scene1": ["a small blue square at the top", "small blue square top", "a blue square near the top"],
    "scene2": ["a green triangle on the right", "green triangle right", "a big green triangle on the right"],
    "scene3": ["a yellow star in the middle", "yellow star middle", "a small yellow star in the centre"],
}
PERFECT = {k: refs[0] for k, refs in REFERENCES.items()}


def test_cider_perfect_matches_pycocoevalcap_and_is_high():
    score, per_item = cider(PERFECT, REFERENCES)
    expected, expected_items = Cider().compute_score(REFERENCES, {k: [v] for k, v in PERFECT.items()})
    assert score == pytest.approx(float(expected))
    assert per_item == pytest.approx([float(s) for s in expected_items])
    # CIDEr-D is scaled by 10; a prediction copying one of three references sits well above 1.
    assert score > 2.0
    assert min(per_item) > 1.0


def test_cider_empty_partial_perfect_ordering():
    _, perfect = cider(PERFECT, REFERENCES)
    _, empty = cider({**PERFECT, "scene1": ""}, REFERENCES)
    _, partial = cider({**PERFECT, "scene1": "a blue circle at the top"}, REFERENCES)
    assert empty[1] == 0.0
    assert empty[1] < partial[1] < perfect[1]
    # The idf comes from the references only, so the other items' scores do not move.
    assert empty[0] == pytest.approx(perfect[0])


def test_cider_list_and_dict_forms_agree():
    keys = list(REFERENCES)
    predictions = {**PERFECT, "scene2": "a green circle"}
    as_dict = cider(predictions, REFERENCES)
    as_list = cider([predictions[k] for k in keys], [REFERENCES[k] for k in keys])
    assert as_list[0] == pytest.approx(as_dict[0])
    assert as_list[1] == pytest.approx(as_dict[1])


def test_cider_per_item_scores_follow_prediction_order():
    reordered_refs = dict(reversed(list(REFERENCES.items())))
    _, per_item = cider(PERFECT, reordered_refs)
    _, in_order = cider(PERFECT, REFERENCES)
    assert per_item == pytest.approx(in_order)


@pytest.mark.parametrize(
    ("predictions", "references", "error"),
    [
        ({"a": "x"}, [["x"]], TypeError),
        ({"a": "x"}, {"b": ["x"]}, ValueError),
        (["x", "y"], [["x"]], ValueError),
        (["x", "y"], [["x"], []], ValueError),
        ([], [], ValueError),
    ],
)
def test_cider_rejects_malformed_inputs(predictions, references, error):
    with pytest.raises(error):
        cider(predictions, references)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),
        ("a red circle.", "red circle"),
        ("yes!", "yes"),
        ("The  Big\tdog", "big dog"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("left-side", "left side"),
        ("dont", "don't"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_after_normalisation():
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("the red circle", "red circle") == 1.0
    assert exact_match("red square", "red circle") == 0.0


def test_vqa_single_answer_is_exact_match():
    assert vqa_accuracy("Yes!", ["yes"]) == 1.0
    assert vqa_accuracy("no", ["yes"]) == 0.0


def test_vqa_two_of_ten_agree():
    # Leaving out one of the 8 others leaves 2 matches (2/3); leaving out one of the 2 leaves 1 (1/3):
    # (8 * min(1, 2/3) + 2 * min(1, 1/3)) / 10 = (16/3 + 2/3) / 10 = 0.6.
    answers = ["two", "2"] + ["3"] * 8
    assert vqa_accuracy("2", answers) == pytest.approx(0.6)


def test_vqa_three_of_ten_agree():
    # 7 left out -> 3 matches (1); 3 left out -> 2 matches (2/3): (7 + 3 * 2/3) / 10 = 0.9.
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)


@pytest.mark.parametrize("matches", [4, 7, 10])
def test_vqa_four_or_more_agree_is_full_credit(matches):
    assert vqa_accuracy("a cat", ["cat"] * matches + ["dog"] * (10 - matches)) == pytest.approx(1.0)


def test_vqa_no_agreement_is_zero():
    assert vqa_accuracy("bird", ["cat"] * 5 + ["dog"] * 5) == 0.0


def test_vqa_two_agreeing_answers_cap_at_one_third():
    # The official formula needs 3 agreeing *other* answers for full credit, so with 2 answers each
    # leave-one-out subset has at most 1 match.
    assert vqa_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3)


def test_vqa_needs_an_answer():
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])
