"""The results tables: what `mm1ablate run` writes under `results/<study>/` and every report reads, declared once.

Running and reporting meet only here and in the files: `ablations` writes rows with these columns, `dashboards`
reads them (and `study.json`, which says what the report needs about the study); neither imports the other, and both
import this module, which names what a trial's evaluation records and how it is tabulated.

trials.parquet, one row per training run:
- META_COLUMNS: bookkeeping (who, when, how it ended, what produced it);
- one column per study axis, named as the study names it (`resolution`, `train.lr`): never containing "/";
- one column per metric, `family/name` (`0shot/vqa/color`, `digits/4shot/vqa`, `cost/cpu_s`, `time/train_s`);
- `protocol/<family>`: the fingerprint of the protocol that family was scored with (mm1core.eval.protocol).

curves.parquet, one row per (run, step, metric): CURVE_COLUMNS. items.parquet, one row per scored item: ITEM_COLUMNS.
"""

from __future__ import annotations

from collections.abc import Iterable

from mm1core.eval.protocol import PROTOCOL_PREFIX

__all__ = [
    "CURVE_COLUMNS",
    "ITEM_COLUMNS",
    "META_COLUMNS",
    "STATUSES",
    "axis_columns",
    "is_metric",
    "last_line",
    "metric_columns",
]

META_COLUMNS = (
    "study",
    "trial_id",
    "arm",
    "seed",
    "status",  # one of STATUSES
    "error",  # the traceback of a failed run, or why a diverged one diverged
    "wall_time_s",
    "num_params",
    "device",
    "node",  # the Ray node the run trained on
    "cpu_model",  # that node's CPU: its stage times (time/*) price later plans only on the same CPU
    "resumed",  # whether its last go resumed it from a checkpoint: its time/* and cost/* are that go's alone
    "machines_json",  # [{cpu_model, device}] of every go that trained it, in order: more than one if resumed elsewhere
    "mlflow_run_id",
    "built_encoder",  # whether this run built its pre-trained encoder (or found it cached)
    "finished_at",
    "config_json",  # the fully resolved trial config
    "eval_protocol_json",  # per metric family, how it was scored
    "eval_items_json",
    "stopped_at_step",  # where early stopping cut a "stopped" run
    "search",  # the Optuna study a searched configuration belongs to
    "adopted_from",  # the study whose run of the same trial (config, seed, code) this study counts (a suite's)
    "git_commit",
    "code_version",  # the hash of mm1core's source that trained it
)
# finished: ran to the end; stopped: cut by the scheduler (never compared as finished); diverged: its loss became
# non-finite (an outcome of the recipe, kept); failed: the process failed (retried by a re-run).
STATUSES = ("finished", "stopped", "diverged", "failed")
CURVE_COLUMNS = ("trial_id", "arm", "seed", "step", "metric", "value")
ITEM_COLUMNS = ("trial_id", "arm", "seed", "metric", "item_id", "category", "score")


def is_metric(name: str) -> bool:
    """Whether a trials column, or a key of a trial's report, is a metric (floors included; fingerprints not)."""
    return "/" in name and name not in META_COLUMNS and not name.startswith(PROTOCOL_PREFIX)


def metric_columns(columns: Iterable[str]) -> list[str]:
    """The metric columns of a trials table, sorted."""
    return sorted(c for c in columns if is_metric(c))


def axis_columns(columns: Iterable[str]) -> list[str]:
    """The axis columns of a trials table, in table order: neither bookkeeping nor metrics."""
    return [c for c in columns if c not in META_COLUMNS and "/" not in c]


def last_line(text: str) -> str:
    """The last non-blank line of an error a run reported: the exception and its message, without the traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
