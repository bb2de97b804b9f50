"""MLflow: experiment = study, one parent run per study execution, one child run per trial.

Everything is logged from the driver through one MlflowClient, so a SQLite store never sees concurrent writers and a
remote server needs to be reachable from the driver only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ablations.plan import Trial
from mm1core.config import flatten

__all__ = ["Tracker", "git_commit", "redacted", "resolve_tracking_uri"]

_BATCH = 100  # MLflow's log_batch limit on params per call


def resolve_tracking_uri(cli_uri: str | None, results_root: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite store under results/."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    results_root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(results_root / 'mlflow.db').resolve()}"


def redacted(uri: str) -> str:
    """The URI as it may be shown: a password (user:password@host) or a token in the query replaced by ***."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(
        f"{k}=***" if k.lower() in ("token", "password", "secret", "key", "access_token") else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    if netloc == parts.netloc and query == parts.query:
        return uri  # nothing to hide: as given (urlunsplit would drop sqlite:////'s empty authority)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


class Tracker:
    def __init__(self, tracking_uri: str, study_name: str, description: str, results_root: Path) -> None:
        self.client = MlflowClient(tracking_uri)
        self.study_name = study_name
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            artifacts = (results_root / "mlartifacts").resolve().as_uri() if _is_local(tracking_uri) else None
            self.experiment_id = self.client.create_experiment(study_name, artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id
        self.commit = git_commit()
        parent = self.client.create_run(
            self.experiment_id,
            run_name=f"{study_name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={
                "study": study_name,
                "git_commit": self.commit,
                "mlflow.note.content": description,
                "mm1ablate.role": "study",
            },
        )
        self.parent_id = parent.info.run_id
        self.child_ids: dict[str, str] = {}

    def start_trial(self, trial: Trial, config_hash: str) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{trial.arm} seed={trial.seed}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                "mm1ablate.role": "trial",
                "trial_id": trial.trial_id,
                "arm": trial.arm,
                "seed": str(trial.seed),
                "study": self.study_name,
                "git_commit": self.commit,
                "config_hash": config_hash,
            },
        )
        run_id = run.info.run_id
        self.child_ids[trial.trial_id] = run_id
        params = [
            Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            for k, v in flatten(trial.config).items()
        ]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(run_id, params=params[i : i + _BATCH])
        self.client.log_dict(run_id, trial.config, "config.json")
        return run_id

    def log_metrics(self, trial_id: str, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.child_ids[trial_id], metrics=batch)

    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None:
        """status: the results row's (finished, failed, stopped); MLflow calls a stopped run KILLED."""
        run_id = self.child_ids[trial_id]
        if error:
            self.client.log_batch(run_id, tags=[RunTag("error", error[:5000])])
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(
            run_id, status={"failed": "FAILED", "stopped": "KILLED"}.get(status, "FINISHED")
        )

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.parent_id, str(path))

    def log_arm_aggregates(self, arms: list[dict[str, Any]]) -> None:
        """Per-arm mean and CI of every metric as metrics of the study's parent run, so the MLflow UI shows them:
        `arm/<arm>/<metric> mean`. MLflow keys allow only [A-Za-z0-9_-. /], so other characters become '_'."""
        now = int(time.time() * 1000)
        batch = [
            Metric(f"arm/{_key(str(row['arm']))}/{_key(column)}", float(value), now, 0)
            for row in arms
            for column, value in row.items()
            if column.endswith((" mean", " ci95")) and value == value  # NaN (one seed: no CI) is not logged
        ]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.parent_id, metrics=batch[i : i + _BATCH])

    def end_study(self, *, failed: bool, summary: dict[str, Any]) -> None:
        self.client.log_batch(
            self.parent_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in summary.items()]
        )
        self.client.set_terminated(self.parent_id, status="FAILED" if failed else "FINISHED")
