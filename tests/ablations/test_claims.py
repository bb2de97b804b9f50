"""Trial claims between drivers that share a results folder: a trial another driver holds is left to it, its holder
named; it is free again when that driver records it or dies, however it dies; and a driver can wait for it."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

from ablations.claims import TrialClaims


def _hold(root: Path, trial_ids: list[str], ready, release) -> None:
    claims = TrialClaims(root, "s-res")
    assert claims.take(trial_ids) == {}
    ready.set()
    release.wait(60)
    claims.release(trial_ids[0])  # recorded: the others stay held until this driver ends
    time.sleep(60)


def test_a_claimed_trial_is_left_to_its_driver_until_recorded_or_its_driver_dies(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(tmp_path, ["shared", "also"], ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        mine = TrialClaims(tmp_path, "s-tok")
        held = mine.take(["shared", "own", "also"])
        assert set(held) == {"shared", "also"}
        assert held["shared"].startswith(f"study s-res, pid {holder.pid} on ")
        assert mine.take(["own"]) == {}  # a driver's own claim is not held against it

        release.set()  # the holder records "shared"
        waited = threading.Thread(target=mine.wait_for, args=(["shared"],))
        waited.start()
        waited.join(30)
        assert not waited.is_alive()
        assert mine.take(["shared"]) == {}

        # "also" is freed by its driver's death, however it dies.
        assert set(TrialClaims(tmp_path, "s-other").take(["also"])) == {"also"}
        holder.kill()
        holder.join(30)
        assert TrialClaims(tmp_path, "s-other").take(["also"]) == {}
    finally:
        if holder.is_alive():
            holder.kill()


def test_released_claims_are_free_to_the_next_driver(tmp_path):
    first = TrialClaims(tmp_path, "a")
    assert first.take(["t1", "t2"]) == {}
    second = TrialClaims(tmp_path, "b")
    assert set(second.take(["t1", "t2"])) == {"t1", "t2"}
    first.release_all()
    assert second.take(["t1", "t2"]) == {}
    assert set(first.take(["t1"])) == {"t1"}  # now the second driver's
