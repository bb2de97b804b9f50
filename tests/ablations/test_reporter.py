"""The reporter process a run starts before its report is due (ablations.handoff.Reporter)."""

from __future__ import annotations

from ablations.handoff import Reporter, prestart_reporter


def test_a_run_takes_the_reporter_started_for_it_before_its_imports(tmp_path):
    """`mm1ablate run` starts the study's reporter before the driver imports Ray (so that its imports take the idle
    core); the run then takes that one, once, and a reporter for anything else is a new process."""
    study_dir = tmp_path / "results" / "s"
    prestarted = prestart_reporter(study_dir, tmp_path / "results", tracking_uri="sqlite:///x.db", nice=0)
    taken = Reporter.started(study_dir, tmp_path / "results", tracking_uri="sqlite:///x.db", nice=0)
    again = Reporter.started(study_dir, tmp_path / "results", tracking_uri="sqlite:///x.db", nice=0)
    other = Reporter.started(tmp_path / "results" / "t", tmp_path / "results", tracking_uri=None, nice=0)
    try:
        assert taken is prestarted
        assert len({taken.process.pid, again.process.pid, other.process.pid}) == 3
    finally:
        for reporter in (taken, again, other):
            reporter.close()
    # Closed untold, a reporter ends having written nothing.
    assert all(r.process.returncode == 0 for r in (taken, again, other))
    assert not (study_dir / "report.html").exists()
