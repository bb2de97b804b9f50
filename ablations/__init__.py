"""ablations: study specs, planning, and running studies on Ray Tune with MLflow tracking and Parquet results.

`from ablations import load_study, plan, run_study`. Running imports Ray and torch; loading and planning do not.
"""

from __future__ import annotations

import os
from typing import Any

# MLflow 3 sends usage reports to its makers' servers from every process that imports it, `mlflow ui` included
# (which inherits this environment): a study talks to the tracking server it is given and to nothing else.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from ablations.plan import plan
from ablations.spec import load_study

__all__ = ["load_study", "plan", "run_study"]


def __getattr__(name: str) -> Any:
    if name == "run_study":
        from ablations.run import (
            run_study,
        )  # Ray and MLflow only for those who run: start-up of plan and schema

        return run_study
    raise AttributeError(name)
