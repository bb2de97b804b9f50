"""Scorers for generated text: CIDEr-D for captions, VQA accuracy and exact match for short answers.

Pure functions over strings. CIDEr-D is the COCO reference implementation (``pycocoevalcap``), not a rewrite,
so scores are comparable with published numbers computed the same way. The answer normalisation follows the
official VQA v2 evaluation script (``vqaEval.py``, github.com/GT-Vision-Lab/VQA, ``processPunctuation`` and
``processDigitArticle``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pycocoevalcap.cider.cider import Cider

__all__ = ["cider", "exact_match", "normalize_answer", "vqa_accuracy"]

# The marks of vqaEval.py's punct list, verbatim.
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# vqaEval.py writes this as "(?!<=\d)(\.)(?!\d)": its look-behind is mistyped as a look-ahead that always holds,
# so in effect it strips every period not followed by a digit. We keep that effect so scores match the script.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# A subset of vqaEval.py's table (apostrophe-less spelling -> canonical); the full table is mostly rare forms.
_CONTRACTIONS = {
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "isnt": "isn't",
    "shouldnt": "shouldn't",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
}


def normalize_answer(text: str) -> str:
    """An answer in the VQA v2 evaluation's canonical form, so that formatting differences do not count as errors.

    Same steps as the official ``vqaEval.py``: newlines and tabs become spaces; ``processPunctuation`` (each
    punctuation mark in ``_PUNCT`` is deleted when it touches a space or the text has a digit-comma-digit group,
    otherwise replaced by a space; then periods not followed by a digit are deleted); ``processDigitArticle``
    (lower-case, number words zero..ten and "none" -> digits, articles a/an/the dropped, apostrophe-less
    contractions restored, words re-joined by single spaces). ``"a red circle."`` -> ``"red circle"``,
    ``"Two"`` -> ``"2"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # Both the "touches a space" test and the comma test look at the input, not the partly cleaned text, as in
    # vqaEval.py.
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    out = text
    for p in _PUNCT:
        if has_digit_comma or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the two answers are equal after ``normalize_answer`` (the VQA v2 normalisation), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer against the human answers to its question.

    Formula from the official VQA v2 evaluation script (``vqaEval.py``; Antol et al., 2015): with the n >= 2
    human answers, for each answer i count the *other* answers equal to the prediction, m_i, and average
    ``min(1, m_i / 3)`` over i. For VQA's 10 answers this is ``min(1, matches / 3)`` smoothed over the ten
    9-answer subsets: 2 matches give 0.6, 3 give 0.9, 4 or more give 1.0. Because a prediction needs 3 agreeing
    *other* answers for full credit, with fewer than 4 answers it cannot reach 1.0 (2 answers: at most 1/3,
    3 answers: at most 2/3); with a single answer the score is ``exact_match`` instead.

    Prediction and answers always go through ``normalize_answer``. vqaEval.py normalises only when the human
    answers disagree, relying on VQA's annotations being normalised already; answers here may not be.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    if len(answers) == 1:
        return exact_match(prediction, answers[0])
    pred = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == pred for a in answers)
    # Leaving out a matching answer leaves matches - 1 among the others; leaving out any other leaves matches.
    left_out_scores = [min(1.0, (matches - (normalize_answer(a) == pred)) / 3) for a in answers]
    return sum(left_out_scores) / len(answers)


def cider(
    predictions: Mapping[str, str] | Sequence[str],
    references: Mapping[str, Sequence[str]] | Sequence[Sequence[str]],
) -> tuple[float, list[float]]:
    """CIDEr-D of predicted captions: ``(corpus score, per-item scores)``, per-item in the predictions' order.

    Computed by ``pycocoevalcap.cider.cider.Cider`` (the COCO caption evaluation code; CIDEr from Vedantam,
    Zitnick and Parikh, "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015, in its CIDEr-D form:
    tf-idf weighted 1..4-gram cosine similarity with clipping and a Gaussian length penalty, sigma 6, averaged
    over references and scaled by 10). The corpus score is the mean of the per-item scores.

    ``predictions`` and ``references`` are both dicts with the same keys (item id -> caption / its reference
    captions) or both sequences of the same length, aligned by position. Each item needs at least one reference.

    Captions are tokenised by splitting on whitespace (what the package does with a string); the caller passes
    lower-case, space-separated words. COCO's PTBTokenizer is deliberately not used (it needs Java). An empty
    prediction scores 0.

    The idf comes from the references of the items being scored, so a per-item score depends on the whole item
    set: arms are comparable only when scored on the same items. An n-gram in every item's references gets
    zero weight, so a single-item corpus always scores 0.
    """
    if isinstance(predictions, Mapping) != isinstance(references, Mapping):
        raise TypeError("predictions and references must both be dicts or both be sequences")
    if isinstance(predictions, Mapping):
        if predictions.keys() != references.keys():
            raise ValueError("predictions and references must have the same keys")
        keys = list(predictions)
    else:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        keys = list(range(len(predictions)))
    if not keys:
        raise ValueError("cider needs at least one item")
    if any(not references[k] for k in keys):
        raise ValueError("every item needs at least one reference caption")
    # Built in the predictions' order: the package scores items in the order of the references dict's keys.
    gts = {k: list(references[k]) for k in keys}
    res = {k: [predictions[k]] for k in keys}
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in scores]
