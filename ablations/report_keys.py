"""The keys of the reports a trial sends the driver through `tune.report`, beside its metrics: the words both ends
(the trainable, the driver, the searcher) must agree on."""

from __future__ import annotations

__all__ = ["DIVERGED_KEY", "FINAL_KEY", "OBJECTIVE", "OBJECTIVE_FINAL", "RUN_KEY"]

FINAL_KEY = "final"  # set on the last report of a run, which also carries its per-item scores
RUN_KEY = "run"  # the trial id of the training run a report is about
OBJECTIVE = "objective"  # the searcher's and the scheduler's metric: the mean over a Tune trial's runs
OBJECTIVE_FINAL = "objective_final"  # set on the report of the objective from the runs' final evaluations
DIVERGED_KEY = "diverged"  # the last report of a run whose loss or gradient became non-finite: why, in words
