"""A suite of studies through the real CLI, Ray and MLflow: planned as a whole, run in order, a trial two studies
share trained once, the scoreboard written, and a suite file's mistakes named at their file and line."""

from __future__ import annotations

import calendar
import json
import re
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_until, run_cli, start_cli

from ablations.spec import StudyError
from ablations.suite import is_suite, load_suite, suite_runs
from ablations.tracking import git_commit
from mm1core.hardware import cpu_model_name

TINY = """
name: {name}
description: {name}
reference:
  preset: tiny
  overrides:
    encoder_pretrain.loss: clip
axes:
  - name: {axis}
    values: {values}
design: grid
seeds: [0]
resources: {{cpu: 1}}
budget:
  encoder: {{steps: 10}}
  multimodal: {{steps: 20}}
"""


def _write_suite(root: Path) -> Path:
    folder = root / "suite"
    folder.mkdir()
    # Both studies contain the reference (32 px, 4 tokens): trained by the first, counted by the second.
    (folder / "res.yaml").write_text(TINY.format(name="s-res", axis="resolution", values="[16, 32]").lstrip())
    (folder / "tok.yaml").write_text(TINY.format(name="s-tok", axis="image_tokens", values="[4, 1]").lstrip())
    (folder / "suite.yaml").write_text(
        "suite: tiny-findings\ndescription: two studies sharing the reference arm\nstudies: [res.yaml, tok.yaml]\n"
    )
    return folder


@pytest.mark.slow
def test_a_suite_is_planned_whole_and_its_shared_trial_trains_once(tmp_path):
    _write_suite(tmp_path)
    plan = run_cli("plan", "suite", "--no-estimate", cwd=tmp_path, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "suite tiny-findings: 2 studies" in plan.stdout
    assert "4 trials in all, 3 distinct; 3 to train" in plan.stdout, plan.stdout
    # s-tok's 1-token arm at 32 px reuses the encoder s-res's 32 px arm builds: the suite builds two, not three.
    assert (
        "pre-trained encoders across the suite: 2 to build, 0 trials use a cached one, 1 reuse one built in this run"
        in plan.stdout
    )

    # The first study alone; the second's plan then knows which of its trials is already trained.
    first = run_cli("run", "suite/res.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    alone = run_cli("plan", "suite/tok.yaml", "--no-estimate", cwd=tmp_path, timeout=120)
    assert alone.stdout.count("finished by another study") == 1 and "1 finished, 1 to run" in alone.stdout
    # Half way, the suite's status: the shared trial is counted for s-tok, not trained again.
    halfway = run_cli("status", "suite", cwd=tmp_path, timeout=120)
    assert halfway.returncode == 0, halfway.stderr
    assert _status_row(halfway.stdout, "s-res") == ["2", "2", "0", "0", "0", "0", "0"], halfway.stdout
    assert _status_row(halfway.stdout, "s-tok") == ["2", "0", "1", "0", "0", "0", "1"], halfway.stdout
    assert (
        "4 trials in all, 3 distinct: 2 finished, 0 running, 0 interrupted, 0 failed, 1 to run"
        in halfway.stdout
    )
    by_file = run_cli("status", "suite/res.yaml", cwd=tmp_path, timeout=120)
    assert by_file.returncode == 0 and "s-res: not running" in by_file.stdout, by_file.stdout + by_file.stderr
    (tmp_path / "results" / "s-res" / "report.html").unlink()
    reported = run_cli("report", "suite", cwd=tmp_path, timeout=300)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert "s-tok: no trial of it has ended yet, so no report" in reported.stdout
    assert (tmp_path / "results" / "s-res" / "report.html").exists()

    done = run_cli("run", "suite", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The plan of the whole, printed before anything runs.
    before = done.stdout.split("== suite tiny-findings: s-res")[0]
    assert "4 trials in all, 3 distinct; 1 to train; about" in before, done.stdout
    assert "2 trials planned, 2 already finished, 0 to run" in done.stdout  # s-res: nothing left
    assert "counting 1 finished runs of the same trials (config, seed and code) from s-res" in done.stdout
    assert "suite tiny-findings: s-res ok, s-tok ok" in done.stdout
    res = pd.read_parquet(tmp_path / "results" / "s-res" / "trials.parquet")
    tok = pd.read_parquet(tmp_path / "results" / "s-tok" / "trials.parquet")
    assert (res.status == "finished").all() and (tok.status == "finished").all() and len(tok) == 2
    shared = tok[tok.adopted_from == "s-res"]
    assert len(shared) == 1
    source = res[res.trial_id == shared.trial_id.iloc[0]].iloc[0]
    # The same run, relabelled as this study's arm: its metrics are the first study's to the last digit.
    assert shared.arm.iloc[0] == "image_tokens=4" and shared.image_tokens.iloc[0] == 4
    assert shared["0shot/vqa"].iloc[0] == source["0shot/vqa"] and source.arm == "resolution=32"
    items = pd.read_parquet(tmp_path / "results" / "s-tok" / "items.parquet")
    assert set(items[items.trial_id == source.trial_id].arm) == {"image_tokens=4"}
    assert (tmp_path / "results" / "s-tok" / "report.html").exists()
    index = (tmp_path / "results" / "index.html").read_text()
    assert "s-res" in index and "s-tok" in index and "F5" in index
    record = json.loads((tmp_path / "results" / "suites" / "tiny-findings.json").read_text())
    assert record["studies"] == ["s-res", "s-tok"]
    assert "<td>tiny-findings</td>" in index.split(">F5</td>")[1].split("</tr>")[0]
    # This run is the suite's one part: what it began with, on what, from which code, and that it ended complete.
    [part] = record["runs"]
    assert part["outcome"] == "complete" and part["ended"] and part["wall_s"] > 0, part
    assert (part["distinct"], part["to_train"]) == (3, 1) and part["plan_s"] > 0
    assert list(part["plan_by_study"]) == ["s-tok"]  # s-res had nothing left to train
    assert part["trained"] == 1 and part["crowded"] <= 1  # s-tok's own trial; the one it counted was s-res's
    assert part["machine"] == cpu_model_name() and part["commit"] == git_commit()
    assert "suite tiny-findings: 1 part, " in index and "the first began with 1 of 3 distinct trials" in index
    assert "; complete; 1 trials to train" in index  # the index written after the part's end

    again = run_cli("plan", "suite", "--no-estimate", cwd=tmp_path, timeout=120)
    assert "0 to train" in again.stdout, again.stdout
    done_status = run_cli("status", "suite", cwd=tmp_path, timeout=120).stdout
    assert "3 distinct: 3 finished, 0 running" in done_status and "runs what is left" not in done_status
    assert "1 part, " in done_status and "; complete" in done_status and "part 1: " in done_status, (
        done_status
    )

    # A study whose every trial another study finished trains nothing, and still reports what it now holds.
    (tmp_path / "suite" / "ref.yaml").write_text(
        TINY.format(name="s-ref", axis="resolution", values="[32]").lstrip()
    )
    counted = run_cli("run", "suite/ref.yaml", cwd=tmp_path)
    assert counted.returncode == 0, counted.stdout + counted.stderr
    assert "1 trials planned, 1 already finished, 0 to run" in counted.stdout
    assert (tmp_path / "results" / "s-ref" / "report.html").exists()


@pytest.mark.slow
def test_two_studies_at_a_time_train_their_shared_trial_once(tmp_path):
    """The default on a machine with two slots: two drivers on one Ray runtime, each taking the next study no other
    runs. The second study's driver finds the reference being trained by the first's and trains its own trial
    beside it; rather than wait for the reference, it runs the next study no driver holds (s-seed: the first driver
    is in s-long by then), then comes back and counts it: five trainings for five distinct trials, one part, every
    study reported."""
    folder = _write_suite(tmp_path)
    # Long enough that the shared trial is still training when s-tok plans.
    for name in ("res.yaml", "tok.yaml"):
        path = folder / name
        path.write_text(path.read_text().replace("multimodal: {steps: 20}", "multimodal: {steps: 300}"))
    # The first driver's next study, long enough to hold it while s-tok's own trial ends.
    long = TINY.format(name="s-long", axis="resolution", values="[32]").replace("seeds: [0]", "seeds: [2]")
    (folder / "long.yaml").write_text(
        long.replace("multimodal: {steps: 20}", "multimodal: {steps: 800}").lstrip()
    )
    other_seed = TINY.format(name="s-seed", axis="resolution", values="[32]").replace(
        "seeds: [0]", "seeds: [1]"
    )
    (folder / "seed.yaml").write_text(other_seed.lstrip())
    suite = (folder / "suite.yaml").read_text()
    in_order = "[res.yaml, tok.yaml, long.yaml, seed.yaml]"
    (folder / "suite.yaml").write_text(suite.replace("[res.yaml, tok.yaml]", in_order))
    done = run_cli("run", "suite", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "5 to train; about " in done.stdout and ", 2 studies at a time (" in done.stdout, out
    # One runtime: every study that trained joined the one the suite run started.
    joined = re.findall(r"joined its suite run's Ray on this machine \(([^)]+)\)", done.stdout)
    assert len(joined) == 4 and len(set(joined)) == 1, out
    assert "1 more another driver is training now, study s-re" in done.stdout, out
    # s-tok's driver moved on to s-seed instead of waiting (whichever driver is free then finishes s-tok).
    moved_on = done.stdout.index("[s-tok] 1 trials another driver is training (study s-res")
    assert "back to them after the suite's other studies" in done.stdout[moved_on:].split("\n")[0], out
    planned = {name: done.stdout.index(f"[{name}] 1 trials planned") for name in ("s-long", "s-seed")}
    assert planned["s-long"] < moved_on < planned["s-seed"], out
    assert "counting 1 finished runs of the same trials" in done.stdout, out
    assert "suite tiny-findings: s-res ok, s-tok ok, s-long ok, s-seed ok" in done.stdout, out
    assert "error" not in done.stderr.lower(), done.stderr
    studies = ("s-res", "s-tok", "s-long", "s-seed")
    rows = pd.concat([pd.read_parquet(tmp_path / "results" / name / "trials.parquet") for name in studies])
    assert (rows.status == "finished").all() and len(rows) == 6
    trained = rows[rows.adopted_from.isna()]
    assert len(trained) == 5 and trained.trial_id.is_unique, rows[["study", "trial_id", "adopted_from"]]
    [part] = json.loads((tmp_path / "results" / "suites" / "tiny-findings.json").read_text())["runs"]
    assert part["outcome"] == "complete" and part["ended"] and part["trained"] == 5, part
    for name in studies:
        assert (tmp_path / "results" / name / "report.html").exists()


@pytest.mark.slow
def test_the_drivers_of_a_killed_suite_run_end_with_it(tmp_path):
    """SIGKILL of `mm1ablate run SUITE` running two studies at a time: its drivers end too (as on Ctrl-C: their
    studies record it), the runtime it started is ended by the next run, and that run finishes the suite."""
    from ablations.leftovers import end_leftovers
    from ablations.results import study_runner

    folder = _write_suite(tmp_path)
    long = (folder / "res.yaml").read_text().replace("multimodal: {steps: 20}", "multimodal: {steps: 2000}")
    (folder / "res.yaml").write_text(long)
    driver = start_cli("run", "suite", cwd=tmp_path)
    read_until(driver, "multimodal step")
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    results = tmp_path / "results"
    deadline = time.monotonic() + 120
    while any(study_runner(results / name) for name in ("s-res", "s-tok")):
        assert time.monotonic() < deadline, [study_runner(results / name) for name in ("s-res", "s-tok")]
        time.sleep(1)
    [runtime] = (results / "suites").glob(".tiny-findings.*")
    left = [p["pid"] for p in json.loads((runtime / ".ray-processes.json").read_text())]
    assert left  # the killed run's Ray runtime, recorded when it started
    (folder / "res.yaml").write_text(long.replace("multimodal: {steps: 2000}", "multimodal: {steps: 20}"))
    again = run_cli("run", "suite", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "suite tiny-findings: s-res ok, s-tok ok" in again.stdout
    assert not any(Path(f"/proc/{pid}").exists() for pid in left), left  # ended by the next run
    assert not (runtime / ".ray-processes.json").exists()  # its own, recorded while it ran, ended with it
    end_leftovers(runtime)


def _status_row(stdout: str, study: str) -> list[str]:
    """A study's counts in `mm1ablate status SUITE`: trials, finished, counted, running, interrupted, failed, to run."""
    return next(line.split()[1:] for line in stdout.splitlines() if line.startswith(f"{study} "))


def _part(started, wall_s, outcome, *, ended=True, to_train=93, commit="bd6ea32", changed=False):
    return {
        "started": started,
        "ended": "later" if ended else None,
        "wall_s": wall_s,
        "outcome": outcome,
        "machine": "Some CPU",
        "cores": 2,
        "commit": commit,
        "local_changes": changed,
        "distinct": 93,
        "to_train": to_train,
        "plan_s": 27276.0,
    }


def test_a_suite_measured_in_parts_sums_them_and_says_what_each_was():
    killed = _part("2026-11-29T08:49:00Z", 1380, "running; f01-resolution ended", ended=False) | {
        "last_seen": "2026-11-29T09:12:00Z"
    }
    # While a driver of the suite is alive, the unended part is running, and its time so far is known.
    now = calendar.timegm((2026, 11, 29, 9, 19, 0, 0, 0, 0))
    assert (
        "08:49:00Z, running: 30 min so far; f01-resolution ended; 93 trials"
        in suite_runs({"suite": "findings", "runs": [killed]}, now=now)[1]
    )
    resumed = _part("2026-11-29T10:00:00Z", 25200, "complete", to_train=80, commit="a8dce9a", changed=True)
    head, first, second = suite_runs({"suite": "findings", "runs": [killed, resumed]})
    # 23 min + 7 h: the killed part counts up to its last heartbeat.
    assert head == (
        "suite findings: 2 parts, 7 h 23 min of wall time in all; the first began from nothing (93 of 93 distinct "
        "trials to train); complete"
    )
    # A later part began: this one's driver was killed, its wall time known to its last heartbeat.
    assert (
        "its driver killed (no end recorded; last seen 2026-11-29T09:12:00Z): 23 min; f01-resolution ended; "
        in first
    )
    alone = suite_runs({"suite": "findings", "runs": [killed]})[1]
    assert (
        "no end recorded (running, or its driver was killed; last seen 2026-11-29T09:12:00Z): 23 min" in alone
    )
    assert "93 trials to train, planned 7 h 35 min; Some CPU, 2 cores; code bd6ea32" in first
    assert (
        "to later, 7 h 00 min; complete; 80 trials to train" in second
        and "a8dce9a with local changes" in second
    )
    # A suite begun on a folder where some trials had finished says so, and one not yet done says it is not.
    partial = suite_runs({"suite": "f", "runs": [_part("t", 60, "interrupted in f01", to_train=89)]})[0]
    assert (
        "the first began with 89 of 93 distinct trials to train (the rest finished before it); not complete"
        in (partial)
    )
    # Parts on two machines: their sum is no one machine's time for the suite.
    elsewhere = resumed | {"machine": "AMD EPYC"}
    assert suite_runs({"suite": "findings", "runs": [killed, elsewhere]})[0] == (
        head + "; its parts ran on 2 machines (AMD EPYC, Some CPU), so the sum is no one machine's time"
    )
    assert suite_runs({"suite": "f", "studies": ["a"]}) == [
        "suite f: no run of the suite as a whole is recorded here (its studies ran one by one)"
    ]


def test_a_part_counts_the_trials_it_trained_and_those_other_work_crowded(tmp_path):
    """What a part trained: finished since it began, in the suite's studies, not counted from another study; and of
    those, the ones that got less than 0.8 of their CPU."""
    from ablations.suite import _trained_since

    def row(trial_id, finished_at, cpu_share, **extra):
        return {
            "trial_id": trial_id,
            "status": "finished",
            "finished_at": finished_at,
            "wall_time_s": 100.0,
            "cost/cpu_s": 100.0 * cpu_share,
            "device": "cpu x1 threads",
            "adopted_from": None,
        } | extra

    (tmp_path / "a").mkdir()
    pd.DataFrame(
        [
            row("before", 50.0, 1.0),
            row("alone", 150.0, 0.97),
            row("beside-tests", 160.0, 0.52),
            row("counted", 170.0, 0.5, adopted_from="b"),
            row("failed", 180.0, 0.5, status="failed"),
        ]
    ).to_parquet(tmp_path / "a" / "trials.parquet")
    assert _trained_since(tmp_path, ["a", "not-run-yet"], since=100.0) == (2, 1)
    line = suite_runs({"suite": "s", "runs": [_part("t", 600, "complete") | {"trained": 2, "crowded": 1}]})[1]
    assert line.endswith("; trained 2, 1 of them with less than 0.8 of their CPU (other work beside them)")


def test_status_names_a_study_file_it_cannot_read(tmp_path):
    (tmp_path / "notastudy.yaml").write_text("seeds: [0]\n")
    for path, why in (("missing.yaml", "no such study file"), ("notastudy.yaml", "not a study file")):
        done = run_cli("status", path, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and f"{path}: {why}" in done.stderr, done.stderr


def test_suite_file_mistakes_are_named_with_their_line(tmp_path, write_study):
    write_study(TINY.format(name="a", axis="resolution", values="[16]"), "a.yaml")
    write_study(TINY.format(name="a", axis="resolution", values="[32]"), "b.yaml")
    write_study(TINY.format(name="c", axis="resolution", values="[16]").replace("seeds", "seedz"), "c.yaml")
    suite = write_study(
        """
        suite: s
        studies:
          - a.yaml
          - missing.yaml
          - b.yaml
          - c.yaml
        extra: 1
        wall_budget_min: four hours
        """,
        "suite.yaml",
    )
    assert is_suite(suite) and is_suite(tmp_path) and not is_suite(tmp_path / "a.yaml")
    with pytest.raises(StudyError) as err:
        load_suite(suite)
    problems = err.value.problems
    assert f"{suite}:7: unknown key 'extra'" in problems[0]
    assert f"{suite}:8: wall_budget_min: the minutes of wall time the suite is sized to run in" in problems[1]
    assert problems[1].endswith("a positive number; got 'four hours'")
    assert any(p.startswith(f"{suite}:4: studies[1]: no such study file 'missing.yaml'") for p in problems)
    assert any(
        f"{suite}:5: studies[2]: study name 'a' is also the name of the study at {suite}:3" in p
        for p in problems
    )
    assert any("c.yaml" in p and "seedz" in p for p in problems), problems


def test_a_suite_with_an_invalid_study_runs_nothing(tmp_path, write_study):
    write_study(TINY.format(name="ok", axis="resolution", values="[16]"), "ok.yaml")
    write_study(TINY.format(name="bad", axis="resolutionn", values="[16]"), "bad.yaml")
    write_study("suite: s\nstudies: [ok.yaml, bad.yaml]\n", "suite.yaml")
    done = run_cli("run", "suite.yaml", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "nothing was run" in done.stderr and "resolutionn" in done.stderr
    assert not (tmp_path / "results" / "ok").exists()


@pytest.mark.parametrize("suite_name", ["findings", "long"])
def test_the_shipped_suites_validate(suite_name):
    suite = load_suite(Path(__file__).resolve().parents[2] / "studies" / suite_name)
    names = [s.name for s in suite.studies]
    assert len(names) == len(set(names)) and all(len(s.spec.seeds) >= 2 for s in suite.studies)
    if suite_name == "findings":
        assert suite.wall_budget_s == 4 * 3600  # the sizing: the whole suite in 4 hours on 2 cores


def test_a_suite_weighs_its_plan_and_its_measurement_against_its_budget(tmp_path):
    """`wall_budget_min` in the suite file: the plan says before anything runs whether it fits, counting the parts
    already run into the folder, and names the precision when it does not; the record's summary (status, the
    scoreboard) says how the measurement stands against it."""
    folder = _write_suite(tmp_path)
    declared = (folder / "suite.yaml").read_text()
    wall = r"(\d+ s|\d+ min|\d+ h \d\d min)"  # how long the tiny plan is depends on the machine that plans it
    for minutes, expected in (
        (
            0.05,
            rf"this plan is about {wall}, over it by {wall} \(\+\d+%\) on this machine, "
            r"which trains in (fp32|bf16)",
        ),
        (600, rf"this plan is about {wall}, within it"),
    ):
        (folder / "suite.yaml").write_text(declared + f"wall_budget_min: {minutes}\n")
        plan = run_cli("plan", "suite", cwd=tmp_path, timeout=300)
        assert plan.returncode == 0, plan.stderr
        budget = next(line for line in plan.stdout.splitlines() if line.startswith("budget: "))
        assert budget.startswith(
            f"budget: {'3 s' if minutes < 1 else '10 h 00 min'} of wall time (the suite file's"
        )
        assert re.search(expected, budget), budget
    # Parts run before count: with 10 h 01 min spent here already, the suite is over its 10 hours.
    record = tmp_path / "results" / "suites" / "tiny-findings.json"
    record.parent.mkdir(parents=True)
    record.write_text(
        json.dumps({"suite": "tiny-findings", "runs": [_part("t", 36060, "interrupted in s-res")]})
    )
    plan = run_cli("plan", "suite", cwd=tmp_path, timeout=300)
    assert "the earlier parts here took 10 h 01 min and this plan adds about" in plan.stdout, plan.stdout
    assert re.search(rf"10 h \d\d min in all, over it by {wall} \(under 1%\) on this machine", plan.stdout), (
        plan.stdout
    )
    # The measurement against the budget, as status and the scoreboard say it.
    done = {"suite": "f", "wall_budget_s": 14400.0, "runs": [_part("t", 23100, "complete")]}
    assert suite_runs(done)[0].startswith(
        "suite f: 1 part, 6 h 25 min of wall time in all, over its budget of "
        "4 h 00 min by 2 h 25 min; the first began from nothing"
    )
    fits = done | {"runs": [_part("t", 10740, "complete")]}
    assert ", 2 h 59 min of wall time in all, within its budget of 4 h 00 min;" in suite_runs(fits)[0]
    going = done | {"runs": [_part("t", 3600, "interrupted in f03")]}
    assert ", 1 h 00 min of wall time in all, its budget 4 h 00 min;" in suite_runs(going)[0]
    assert "budget" not in suite_runs({"suite": "f", "runs": [_part("t", 23100, "complete")]})[0]


@pytest.mark.slow
def test_a_killed_suite_driver_leaves_its_part_and_ctrl_c_stops_the_suite(tmp_path):
    """SIGKILL of a suite's driver mid-study: its part keeps the wall time of its last heartbeat, though no study of
    it ended. Then Ctrl-C of the next run stops the suite, not only the study it was in. One study at a time: the
    order of the studies is what the test reads."""
    folder = _write_suite(tmp_path)
    long = (folder / "res.yaml").read_text().replace("multimodal: {steps: 20}", "multimodal: {steps: 2000}")
    (folder / "res.yaml").write_text(long)
    record = tmp_path / "results" / "suites" / "tiny-findings.json"
    beating = {"MM1ABLATE_SUITE_HEARTBEAT_S": "1"}
    driver = start_cli("run", "suite", "--drivers", "1", cwd=tmp_path, env=beating)
    read_until(driver, "multimodal step")
    deadline = time.monotonic() + 60
    while json.loads(record.read_text())["runs"][0]["wall_s"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    [killed] = json.loads(record.read_text())["runs"]
    assert killed["ended"] is None and killed["outcome"] == "running; in s-res" and killed["wall_s"] >= 3, (
        killed
    )

    driver = start_cli("run", "suite", "--drivers", "1", cwd=tmp_path, env=beating)
    seen = read_until(driver, "multimodal step")
    # While it runs: this part so far, and what is left of the suite (s-res by its estimate, s-tok by the plan).
    running = run_cli("status", "suite", cwd=tmp_path, timeout=120).stdout
    assert f"its driver killed (no end recorded; last seen {killed['last_seen']}): " in running, running
    assert "part 2: " in running and "running: " in running.split("part 2: ")[1], running
    assert "left for the suite: " in running and "for the 1 study after it" in running, running
    driver.send_signal(signal.SIGINT)
    rest, _ = driver.communicate(timeout=300)
    out = "".join(seen) + rest
    assert driver.returncode == 130, out
    assert "suite tiny-findings: interrupted in s-res; not started: s-tok" in out
    assert not (tmp_path / "results" / "s-tok").exists()
    status = run_cli("status", "suite", cwd=tmp_path, timeout=120).stdout
    _, _, _, running, interrupted, _, _ = _status_row(status, "s-res")
    assert running == "0" and int(interrupted) >= 1, status
    assert "`mm1ablate run suite` runs what is left" in status
    # The suite's measurement, both parts of it, began from nothing (4 distinct trials: the
    # longer s-res no longer shares its reference with s-tok).
    assert "the first began from nothing (4 of 4 distinct trials to train); not complete" in status, status
    assert "interrupted in s-res" in status.split("part 2: ")[1]


def _begin_parts(record: Path, count: int) -> None:
    from ablations.suite import SuitePlan, begin_suite_run

    for _ in range(count):
        begin_suite_run(record, SuitePlan(3, 3, 60.0, {"a": 60.0})).update("complete", ended=True)


def test_drivers_sharing_a_results_folder_keep_each_others_parts(tmp_path):
    """Two nodes running the same suite into one shared results folder: each part one of them records is kept."""
    import multiprocessing

    record = tmp_path / "suites" / "s.json"
    context = multiprocessing.get_context("spawn")
    drivers = [context.Process(target=_begin_parts, args=(record, 15)) for _ in range(4)]
    for driver in drivers:
        driver.start()
    for driver in drivers:
        driver.join(timeout=120)
        assert driver.exitcode == 0
    runs = json.loads(record.read_text())["runs"]
    assert len(runs) == 60 and all(r["outcome"] == "complete" for r in runs)


@pytest.mark.slow
def test_a_study_another_driver_runs_is_refused_and_the_suite_goes_on(tmp_path):
    """A second node's driver of the same suite on shared storage: the study the first node runs (its lock held)
    is refused, not failed, and this driver goes on to the next study."""
    import fcntl

    from ablations.results import RUN_LOCK

    _write_suite(tmp_path)
    busy = tmp_path / "results" / "s-res"
    busy.mkdir(parents=True)
    with open(busy / RUN_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("pid 1 on another node")
        lock.flush()
        done = run_cli("run", "suite", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "suite tiny-findings: s-res refused, s-tok ok" in done.stdout, out
    assert "study 's-res' is already running" in done.stderr
    [part] = json.loads((tmp_path / "results" / "suites" / "tiny-findings.json").read_text())["runs"]
    assert part["outcome"] == "ended; s-res refused" and part["ended"]


def test_a_suite_run_that_retrains_other_codes_trials_plans_them_as_to_train(tmp_path, capsys):
    """`mm1ablate run SUITE --rerun-other-code`: the plan it begins with (and records as the part's) counts the
    finished trials another mm1core trained as trials to train."""
    from ablations.cli import _print_suite_plan
    from ablations.plan import plan
    from mm1core.stage_cache import code_version

    suite = load_suite(_write_suite(tmp_path))
    trials = plan(suite.studies[0])  # s-res: 16 and 32 px
    rows = [
        {"trial_id": t.trial_id, "status": "finished", "code_version": version}
        for t, version in zip(trials, ["0123456789ab", code_version()], strict=True)
    ]
    (tmp_path / "results" / "s-res").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "results" / "s-res" / "trials.parquet")
    root = tmp_path / "results"
    assert _print_suite_plan(suite, root, estimate=False).to_train == 1  # s-tok's 1-token arm
    assert _print_suite_plan(suite, root, estimate=False, rerun_other_code=True).to_train == 2
    assert not (root / "s-tok").exists()  # planning writes nothing
