"""MLflow: experiment = study, one parent run per study execution, one child run per trial.

Everything is logged from the driver through one MlflowClient, so a SQLite store never sees concurrent writers and a
remote server needs to be reachable from the driver only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ablations.plan import Trial
from mm1core.config import flatten
from mm1core.stage_cache import code_version
from mm1core.storage import append_jsonl, atomic_write_text, read_jsonl

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# mlflow is imported where a client is made, not here: it is half a second of the driver's start, and `run` makes its
# client in a thread beside Ray's start (ablations.run), where that half second is hidden.

__all__ = [
    "Tracker",
    "TrackingUnreachable",
    "check_reachable",
    "git_commit",
    "redacted",
    "resolve_tracking_uri",
    "sync",
]

_BATCH = 100  # MLflow's log_batch limit on params per call
_METRICS_PER_CALL = 1000  # MLflow's log_batch limit on metrics per call
# A server that is down must cost seconds, not MLflow's default of minutes of retries per call: the call is queued on
# disk instead (Tracker), and sent when the server is back.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


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


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Two studies that start at once on a new SQLite store would both create its tables, and one would fail: the
    first to take this lock creates them (and the study's experiment), the other then finds them."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class TrackingUnreachable(RuntimeError):
    """The tracking server does not answer when a run starts, or its URI names no store MLflow has."""


# The tracking stores MLflow has (its `mlflow.tracking` store registry; a database URI may name its driver:
# mysql+pymysql).
_STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "http", "https")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A tracking URI that names no store, or a server that is down, is said at once, in one line naming it, not
    after minutes of retries or in a traceback from inside MLflow once the study's trials are starting."""
    scheme = urlsplit(uri).scheme.partition("+")[0]
    if scheme not in _STORE_SCHEMES:
        raise TrackingUnreachable(
            f"the MLflow tracking URI {redacted(uri)} names no store MLflow has (scheme {scheme!r}; it takes "
            f"{', '.join(repr(s + '://') for s in _STORE_SCHEMES if s)} or a path)"
        )
    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout_s):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnreachable(
            f"the MLflow tracking server at {redacted(uri)} does not answer ({reason}); start it, or leave out "
            "--tracking-uri and MLFLOW_TRACKING_URI to track in results/mlflow.db"
        ) from None


class _Outbox:
    """MLflow calls that could not reach the server, in their order, on disk (one JSON line each)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pending(self) -> int:
        return len(self._read())

    def _read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def append(self, op: dict[str, Any]) -> None:
        append_jsonl(self.path, op)

    def replay(self, execute: Any) -> int:
        """Execute the queued calls in order; those after the first that fails stay queued. The number left."""
        ops = self._read()
        done = 0
        try:
            for op in ops:
                execute(op)
                done += 1
        finally:
            rest = ops[done:]
            if rest:
                atomic_write_text(self.path, "".join(json.dumps(op) + "\n" for op in rest))
            else:
                self.path.unlink(missing_ok=True)
        return len(rest)


class _Calls:
    """The MLflow calls a study makes, as data: each can run now or be replayed later from the outbox.

    A trial's run is named by a reference, "trial:<trial_id>", resolved to its run id when the call runs: a run created
    while the server was down gets its id only when it is replayed.
    """

    def __init__(self, client: MlflowClient, experiment_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.run_ids: dict[str, str] = {}

    def existing_run(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.trial_id = '{trial_id}' and tags.`mm1ablate.role` = 'trial'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def resolve(self, ref: str) -> str:
        if not ref.startswith("trial:"):
            return ref
        if ref not in self.run_ids:
            found = self.existing_run(ref.removeprefix("trial:"))
            if found is None:
                raise RuntimeError(f"no MLflow run for {ref}")
            self.run_ids[ref] = found
        return self.run_ids[ref]

    def execute(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "start_trial":
            self._start_trial(op)
            return
        if kind == "supersede":
            self._supersede(op)
            return
        run_id = self.resolve(op["ref"])
        if kind == "log_batch":
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), ts, step) for k, v, ts, step in op.get("metrics", [])],
                params=[Param(k, v) for k, v in op.get("params", [])],
                tags=[RunTag(k, v) for k, v in op.get("tags", [])],
            )
        elif kind == "terminate":
            self.client.set_terminated(run_id, status=op["status"])
        elif kind == "log_text":
            self.client.log_text(run_id, op["text"], op["path"])
        elif kind == "log_artifact":
            self.client.log_artifact(run_id, op["path"])
        else:
            raise ValueError(f"unknown queued MLflow call {kind!r}")

    def _supersede(self, op: dict[str, Any]) -> None:
        """The trial's runs that other model code trained (tagged with another code_version, or from before runs
        were tagged) are no longer its runs: its next start opens a new one. A run this code trained stays the
        trial's, so a retraining that was interrupted is reopened, and the call can be repeated."""
        trial_id = op["ref"].removeprefix("trial:")
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.trial_id = '{trial_id}' and tags.`mm1ablate.role` = 'trial'",
        )
        for run in runs:
            if run.data.tags.get("code_version") == op["code_version"]:
                continue
            self.client.set_tag(run.info.run_id, "mm1ablate.role", "superseded")
            self.client.set_tag(run.info.run_id, "mm1ablate.superseded_because", op["why"])
            if self.run_ids.get(op["ref"]) == run.info.run_id:
                del self.run_ids[op["ref"]]

    def _log_missing(self, run_id: str, received: list[list]) -> None:
        """The points a killed driver had received (its journal) but not yet sent: sent now, once each."""
        from mlflow.entities import Metric

        if not received:
            return
        keys = {key for _, metrics in received for key in metrics}
        have = {(key, m.step) for key in keys for m in self.client.get_metric_history(run_id, key)}
        now = int(time.time() * 1000)
        missing = [
            Metric(key, float(value), now, int(step))
            for step, metrics in received
            for key, value in metrics.items()
            if (key, int(step)) not in have
        ]
        for i in range(0, len(missing), _METRICS_PER_CALL):
            self.client.log_batch(run_id, metrics=missing[i : i + _METRICS_PER_CALL])

    def _start_trial(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Param

        ref = f"trial:{op['trial_id']}"
        existing = self.existing_run(op["trial_id"])
        if existing is not None:  # reopened under this execution's parent run: one run per trial
            self.client.update_run(existing, status="RUNNING")
            self.client.set_tag(existing, "mlflow.parentRunId", op["parent_id"])
            self.run_ids[ref] = existing
            self._log_missing(existing, op.get("received", []))
            return
        run = self.client.create_run(self.experiment_id, run_name=op["run_name"], tags=op["tags"])
        run_id = run.info.run_id
        self.run_ids[ref] = run_id
        params = [Param(k, v) for k, v in op["params"]]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(run_id, params=params[i : i + _BATCH])
        self.client.log_dict(run_id, op["config"], "config.json")


def _merged(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same calls in fewer: each run's metrics that arrived together go in one log_batch, placed where its first
    one was, so every call still comes after everything the run was sent before it (a terminate after its metrics)."""
    out: list[dict[str, Any]] = []
    open_batch: dict[str, dict[str, Any]] = {}
    for op in ops:
        metrics_only = op["op"] == "log_batch" and not op.get("params") and not op.get("tags")
        if not metrics_only:
            open_batch.clear()
            out.append(op)
            continue
        batch = open_batch.get(op["ref"])
        if batch is not None and len(batch["metrics"]) + len(op["metrics"]) <= _METRICS_PER_CALL:
            batch["metrics"] = batch["metrics"] + op["metrics"]
        else:
            open_batch[op["ref"]] = batch = dict(op)
            out.append(batch)
    return out


class Tracker:
    """The study's MLflow runs. Results reach Parquet first (the callers); a tracking server that goes down in the
    middle of a run costs nothing: the calls it missed wait in `<study>/mlflow-queue.jsonl` and are sent, in order,
    once it answers again, on the next call, at the next run of the study or by `mm1ablate sync <study>`.

    Calls are sent by a thread of their own, gathered for GATHER_S and merged (`_merged`): sent one by one from the
    driver's event loop, a SQLite store's commit per report took a tenth of a CPU core from the trials and held up
    Tune's handling of the next report (bench/README.md, run overhead)."""

    RETRY_EVERY_S = 10.0
    GATHER_S = 0.25

    def __init__(
        self,
        tracking_uri: str,
        study_name: str,
        description: str,
        results_root: Path,
        out: TextIO = sys.stdout,
    ) -> None:
        from mlflow.tracking import MlflowClient

        check_reachable(tracking_uri)
        self.uri = tracking_uri
        self.study_name = study_name
        self.out = out
        with _store_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri)
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                artifacts = (
                    (results_root / "mlartifacts").resolve().as_uri() if _is_local(tracking_uri) else None
                )
                self.experiment_id = self.client.create_experiment(study_name, artifact_location=artifacts)
            else:
                self.experiment_id = experiment.experiment_id
        self.calls = _Calls(self.client, self.experiment_id)
        self.outbox = _Outbox(results_root / study_name / "mlflow-queue.jsonl")
        try:
            left = self.outbox.replay(self.calls.execute)  # what an earlier run could not send
        except Exception:  # the server went away again: the calls stay queued, this run goes on
            left = self.outbox.pending()
        if left:
            print(
                f"[{study_name}] {left} MLflow calls queued by an earlier run still wait in {self.outbox.path}",
                file=out,
                flush=True,
            )
        self.commit = git_commit()
        self._close_abandoned()
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
        self.started: set[str] = set()  # trials whose run was opened by this execution
        self._retry_at = 0.0
        self._calls: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._now = threading.Event()  # someone waits for what is queued: no gathering
        self._sender = threading.Thread(target=self._send_queued, name="mlflow-sender", daemon=True)
        self._sender.start()

    def _close_abandoned(self) -> None:
        """Runs a killed driver left RUNNING: the caller holds the study's run lock, so no live runner owns them.
        They end as KILLED; a trial that runs again reopens its own run (start_trial) rather than adding one."""
        for run in self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10_000
        ):
            self.client.set_terminated(run.info.run_id, status="KILLED")

    def _send(self, op: dict[str, Any]) -> None:
        self._calls.put(op)

    def _wait_sent(self) -> None:
        """Until every call made so far has been sent to MLflow, or queued on disk for a server that is down."""
        self._now.set()
        self._calls.join()
        self._now.clear()

    def _send_queued(self) -> None:
        while True:
            first = self._calls.get()
            if first is None:
                self._calls.task_done()
                return
            self._now.wait(self.GATHER_S)
            ops = [first]
            with contextlib.suppress(queue.Empty):
                while True:
                    ops.append(self._calls.get_nowait())
            closing = None in ops
            try:
                for op in _merged([op for op in ops if op is not None]):
                    self._send_now(op)
            except Exception as err:  # the outbox itself failed (a full disk): said, and the calls are lost
                print(f"[{self.study_name}] MLflow calls lost: {err}", file=self.out, flush=True)
            finally:
                for _ in ops:
                    self._calls.task_done()
            if closing:
                return

    def _send_now(self, op: dict[str, Any]) -> None:
        """Run the call now, or queue it (behind whatever is queued already) while the server does not answer."""
        if self.outbox.pending():
            if time.monotonic() < self._retry_at or self._flush():
                self.outbox.append(op)
                return
        try:
            self.calls.execute(op)
        except Exception as err:  # whatever MLflow raises, the call waits on disk
            self.outbox.append(op)
            self._retry_at = time.monotonic() + self.RETRY_EVERY_S
            print(
                f"[{self.study_name}] MLflow at {redacted(self.uri)} did not take a call ({type(err).__name__}); "
                f"results go on to Parquet and the calls wait in {self.outbox.path} until it answers "
                f"(`mm1ablate sync {self.study_name}`)",
                file=self.out,
                flush=True,
            )

    def _flush(self) -> int:
        """Send what is queued; the number still queued (then retried no sooner than RETRY_EVERY_S)."""
        try:
            left = self.outbox.replay(self.calls.execute)
        except Exception:  # still down
            left = self.outbox.pending()
        if left:
            self._retry_at = time.monotonic() + self.RETRY_EVERY_S
        else:
            print(
                f"[{self.study_name}] MLflow answers again: the queued calls were sent",
                file=self.out,
                flush=True,
            )
        return left

    def start_trial(
        self, trial: Trial, config_hash: str, received: Iterable[tuple[int, dict[str, float]]] = ()
    ) -> None:
        """The trial's MLflow run: its own from an earlier execution (interrupted, failed or stopped early), reopened
        under this execution's parent run, or a new one. One run per trial, however often the study is resumed.

        received: the points an earlier driver of the study had received for it (its journal); those that driver was
        killed before sending are sent now."""
        self._send(
            {
                "op": "start_trial",
                "trial_id": trial.trial_id,
                "parent_id": self.parent_id,
                "run_name": f"{trial.arm} seed={trial.seed}",
                "tags": {
                    "mlflow.parentRunId": self.parent_id,
                    "mm1ablate.role": "trial",
                    "trial_id": trial.trial_id,
                    "arm": trial.arm,
                    "seed": str(trial.seed),
                    "study": self.study_name,
                    "git_commit": self.commit,
                    "code_version": code_version(),
                    "config_hash": config_hash,
                },
                "params": [
                    [k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
                    for k, v in flatten(trial.config).items()
                ],
                "config": trial.config,
                "received": [[step, metrics] for step, metrics in received],
            }
        )
        # Not waited for: the trial's next training call waits on this callback, and the run's id is wanted only
        # by its results row, at its end (`run_id`).
        self.started.add(trial.trial_id)

    def run_id(self, trial_id: str) -> str | None:
        """The MLflow run of a started trial; None while the server does not answer (its calls wait in the
        outbox). Sent by its end, so this waits only where the trial ended at once."""
        ref = f"trial:{trial_id}"
        if ref not in self.calls.run_ids:
            self._wait_sent()
        return self.calls.run_ids.get(ref)

    def supersede(self, trial_ids: set[str]) -> None:
        """These trials train again with this code: their MLflow runs that other model code trained are marked
        superseded (kept in the store, out of the study's runs), and each trial trains in a run of its own."""
        for trial_id in sorted(trial_ids):
            self._send(
                {
                    "op": "supersede",
                    "ref": f"trial:{trial_id}",
                    "code_version": code_version(),
                    "why": f"trained by other model code; trained again by mm1core {code_version()}",
                }
            )

    def log_metrics(self, trial_id: str, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._send(
            {
                "op": "log_batch",
                "ref": f"trial:{trial_id}",
                "metrics": [[k, float(v), now, step] for k, v in metrics.items()],
            }
        )

    def end_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None:
        """status: the results row's (finished, failed, stopped, diverged); MLflow calls a stopped run KILLED and a
        diverged one FAILED, tagged `diverged`."""
        ref = f"trial:{trial_id}"
        tags = [["diverged", "true"]] if status == "diverged" else []
        if error:
            tags.append(["error", error[:5000]])
            self._send({"op": "log_text", "ref": ref, "text": error, "path": "error.txt"})
        if tags:
            self._send({"op": "log_batch", "ref": ref, "tags": tags})
        mlflow_status = {"failed": "FAILED", "diverged": "FAILED", "stopped": "KILLED"}.get(
            status, "FINISHED"
        )
        self._send({"op": "terminate", "ref": ref, "status": mlflow_status})

    def log_artifact(self, path: Path) -> None:
        self._send({"op": "log_artifact", "ref": self.parent_id, "path": str(path.resolve())})

    def log_arm_aggregates(self, arms: list[dict[str, Any]]) -> None:
        """Per-arm mean and CI of every metric the arms measured as metrics of the study's parent run, so the MLflow
        UI shows them: `arm/<arm>/<metric> mean`. Not the floors (`floor/...`: the evaluation's chance and oracle
        levels, the same for every arm), which were half of them and half of the study's last MLflow calls (0.5 s
        for 16 arms in a SQLite store); they stay on the trials' runs and in arms.csv. MLflow keys allow only
        [A-Za-z0-9_-. /], so other characters become '_'."""
        now = int(time.time() * 1000)
        batch = [
            [f"arm/{_key(str(row['arm']))}/{_key(column)}", float(value), now, 0]
            for row in arms
            for column, value in row.items()
            if column.endswith((" mean", " ci95"))
            and not column.startswith("floor/")
            and value == value  # NaN (one seed: no CI) is not logged
        ]
        for i in range(0, len(batch), _BATCH):
            self._send({"op": "log_batch", "ref": self.parent_id, "metrics": batch[i : i + _BATCH]})

    def end_study(self, *, failed: bool, summary: dict[str, Any]) -> None:
        self._send(
            {
                "op": "log_batch",
                "ref": self.parent_id,
                "tags": [[f"trials_{k}", str(v)] for k, v in summary.items()],
            }
        )
        self._send({"op": "terminate", "ref": self.parent_id, "status": "FAILED" if failed else "FINISHED"})
        self._calls.put(None)
        self._wait_sent()
        self._sender.join()
        if self.outbox.pending():
            self._flush()


def sync(study_dir: Path, tracking_uri: str) -> tuple[int, int]:
    """(calls sent, calls still queued) of what a study's runs could not send to MLflow."""
    outbox = _Outbox(study_dir / "mlflow-queue.jsonl")
    queued = outbox.pending()
    if not queued:
        return 0, 0
    from mlflow.tracking import MlflowClient

    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_dir.name)
    if experiment is None:
        raise TrackingUnreachable(
            f"{redacted(tracking_uri)} has no experiment {study_dir.name!r}: is it the server the study ran against?"
        )
    left = outbox.replay(_Calls(client, experiment.experiment_id).execute)
    return queued - left, left
