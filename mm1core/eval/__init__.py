"""Evaluation: the zero-shot / few-shot / text-only suite (suite.py) and its scorers (scoring.py)."""

# The paper's columns: a report leads with these. Torch-free, so the driver and the reports can name them.
HEADLINE_METRICS = ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg")
