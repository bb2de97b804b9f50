"""Evaluation: the zero-shot / few-shot / text-only suite (suite.py), its scorers (scoring.py), the floors every
metric is read against (floors.py), held-out losses and image reliance (heldout.py), and encoder probes (probes.py)."""

# The paper's columns: a report leads with these. Torch-free, so the driver and the reports can name them.
HEADLINE_METRICS = ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg")

TEXTCORE_TASKS = ("scene_qa", "arithmetic")
HELDOUT_METRICS = ("heldout/loss", "heldout/loss_other_images", "heldout/image_reliance")


def scored_metrics(shots: tuple[int, ...] | list[int]) -> tuple[str, ...]:
    """Every metric the evaluation records at each round, for an eval config with these shot counts: what a study
    may search or stop early on."""
    from mm1core.data.text import QUESTION_CATEGORIES  # torch-free, like this module

    names: list[str] = []
    for k in shots:
        names += [f"{k}shot/avg", f"{k}shot/cider", f"{k}shot/vqa"]
        names += [f"{k}shot/vqa/{category}" for category in QUESTION_CATEGORIES]
    names += ["textcore/avg", *(f"textcore/{task}" for task in TEXTCORE_TASKS), *HELDOUT_METRICS]
    return tuple(names)
