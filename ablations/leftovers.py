"""Processes an embedded Ray leaves behind when its driver is killed, ended by the next run of the study.

A driver killed with SIGKILL takes its Ray head (GCS, raylet) and its trial workers with it, but the raylet's agents
(dashboard agent, runtime-env agent) outlive it, re-parented to init. The driver records the processes its Ray
started, each with its start time (so a recycled process id is never taken for one of them); the next run of the
study, which holds the study's lock and so knows that driver is gone, ends those still alive. Linux /proc only;
elsewhere nothing is recorded.

Better than a killed driver is one that stops: SIGTERM (a batch scheduler's notice, `kill`) and a background job's
SIGINT stop a run as Ctrl-C does (`stop_on_signals_as_on_ctrl_c`).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from mm1core.storage import atomic_write_text

__all__ = [
    "descendants",
    "end_leftovers",
    "forget_processes",
    "record_processes",
    "stop_on_signals_as_on_ctrl_c",
]

_FILE = ".ray-processes.json"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def record_processes(study_dir: Path) -> None:
    """After starting an embedded Ray: the processes it started, for the next run to end if this driver is killed."""
    if not Path("/proc/self/stat").exists():
        return
    processes = [
        {"pid": pid, "start": start}
        for pid in descendants(os.getpid())
        if (start := _start_time(pid)) is not None
    ]
    atomic_write_text(study_dir / _FILE, json.dumps(processes))


def forget_processes(study_dir: Path) -> None:
    (study_dir / _FILE).unlink(missing_ok=True)


def end_leftovers(study_dir: Path) -> int:
    """End what a killed driver of this study left running; the number ended. Call only while holding the lock."""
    path = study_dir / _FILE
    if not path.exists():
        return 0
    ended = 0
    for process in json.loads(path.read_text()):
        if _start_time(process["pid"]) == process["start"]:  # the same process, not a recycled id
            try:
                os.kill(process["pid"], signal.SIGKILL)
                ended += 1
            except ProcessLookupError:
                pass
    path.unlink()
    return ended


def stop_on_signals_as_on_ctrl_c() -> None:
    """SIGTERM and SIGINT stop a run as Ctrl-C in a terminal does: trials checkpoint, the study and a suite's part
    record how it ended, and a later run resumes. A shell starts a background job with SIGINT ignored, and Tune
    listens for SIGINT only while trials run; SIGTERM would end the driver at once (ray.init sets it to exit), with
    nothing recorded of how the run ended. Called again after ray.init, which replaces the SIGTERM handler."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Passed on as SIGINT, to whoever listens for it then: Tune while trials run, Python's handler otherwise.
    signal.signal(signal.SIGTERM, _as_sigint)


def _as_sigint(signum: int, frame: object) -> None:
    os.kill(os.getpid(), signal.SIGINT)
