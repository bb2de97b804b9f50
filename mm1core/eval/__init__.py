"""Evaluation: the zero-shot / few-shot / text-only suite (suite.py), its scorers (scoring.py), the floors every
metric is read against (floors.py), held-out losses and image reliance (heldout.py), and encoder probes (probes.py)."""

# The paper's columns: a report leads with these. Torch-free, so the driver and the reports can name them.
HEADLINE_METRICS = ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg")
