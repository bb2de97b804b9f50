"""Which driver trains a trial that several studies hold: the first to claim it, on the results folder they share.

A suite's studies share trials (the reference arm is in every one). One driver running them in order trains a shared
trial once and the later studies count it (ablations.suite.adopt_finished). Two drivers at once (two nodes of a
cluster on shared storage, or two drivers on one machine's Ray runtime, so that no CPU idles while a study's last
trial runs alone) would both train it: each claims the trials it is about to train, and a trial another driver has
claimed is left to that driver and counted when it ends.

A claim is a lock on `<results>/.claims/<trial id>`, held by the driver's process from the moment its study plans the
trial until the trial is recorded (finished, stopped, diverged or failed). The kernel releases it when the process
ends, however it ends (POSIX locks: also on shared storage), so a killed driver's trials are free to whoever comes
next. The files stay: removing a lock file another process may be opening is a race, and they are a few bytes each.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ablations.results import hold_lock, this_process

__all__ = ["CLAIMS", "TrialClaims"]

CLAIMS = ".claims"


class TrialClaims:
    """The claims one driver holds for one study's run."""

    def __init__(self, results_root: Path, study: str) -> None:
        self.dir = results_root / CLAIMS
        self.study = study
        self._held: dict[str, IO[str]] = {}

    def take(self, trial_ids: Iterable[str]) -> dict[str, str]:
        """Claim every trial not claimed by another driver; {trial id: who holds it} for those that are."""
        self.dir.mkdir(parents=True, exist_ok=True)
        elsewhere: dict[str, str] = {}
        for trial_id in trial_ids:
            if trial_id in self._held:
                continue
            taken = hold_lock(self.dir / trial_id, f"study {self.study}, {this_process()}")
            if isinstance(taken, str):
                elsewhere[trial_id] = taken
            else:
                self._held[trial_id] = taken
        return elsewhere

    def release(self, trial_id: str) -> None:
        lock = self._held.pop(trial_id, None)
        if lock is not None:
            lock.close()  # closing the last descriptor of the open file releases its lock

    def release_all(self) -> None:
        for trial_id in list(self._held):
            self.release(trial_id)

    def wait_for(self, trial_ids: Iterable[str]) -> None:
        """Block until no other driver holds a claim on any of `trial_ids` (each ended, or its driver did)."""
        for trial_id in trial_ids:
            if trial_id in self._held:
                continue
            with open(self.dir / trial_id, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released on leaving the block: this only waits
