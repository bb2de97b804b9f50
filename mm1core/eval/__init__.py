"""Evaluation: the zero-shot / few-shot / text-only suite (suite.py), its scorers (scoring.py), the floors every
metric is read against (floors.py), held-out losses and image reliance (heldout.py), and encoder probes (probes.py)."""

from mm1core.config import FILE_TASK_KINDS
from mm1core.data.text import QUESTION_CATEGORIES

# The paper's columns: a report leads with these. Torch-free, so the driver and the reports can name them.
HEADLINE_METRICS = ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg")

TEXTCORE_TASKS = ("scene_qa", "arithmetic")
HELDOUT_METRICS = ("heldout/loss", "heldout/loss_other_images", "heldout/image_reliance")


# The scores a file task's kind records: the first is its headline; any is what a search or a scheduler may use.
FILE_TASK_SCORES = {kind: spec.scores for kind, spec in FILE_TASK_KINDS.items()}


def scored_metrics(shots: tuple[int, ...] | list[int], tasks: list[dict] | None = None) -> tuple[str, ...]:
    """Every metric the evaluation records at each round, for an eval config with these shot counts and tasks
    (config dicts; None: the world's suite alone): what a study may search or stop early on."""
    tasks = tasks if tasks is not None else [{"name": "world", "kind": "world"}]
    names: list[str] = []
    if any(task.get("kind", "world") == "world" for task in tasks):
        for k in shots:
            names += [f"{k}shot/avg", f"{k}shot/cider", f"{k}shot/vqa"]
            names += [f"{k}shot/vqa/{category}" for category in QUESTION_CATEGORIES]
        names += ["textcore/avg", *(f"textcore/{task}" for task in TEXTCORE_TASKS), *HELDOUT_METRICS]
    for task in tasks:
        if task.get("kind", "world") in FILE_TASK_SCORES:
            names += [
                f"{task['name']}/{k}shot/{score}"
                for k in (task.get("shots") or shots)
                for score in FILE_TASK_SCORES[task["kind"]]
            ]
    return tuple(names)


def file_task_headlines(metrics: list[str]) -> list[str]:
    """The file tasks' headline metrics among `metrics` (`<task>/<k>shot/<first score of its kind>`), in order."""
    primary = {scores[0] for scores in FILE_TASK_SCORES.values()}
    out = []
    for metric in metrics:
        parts = metric.split("/")
        if len(parts) == 3 and parts[1].endswith("shot") and parts[1][:-4].isdigit() and parts[2] in primary:
            out.append(metric)
    return out
