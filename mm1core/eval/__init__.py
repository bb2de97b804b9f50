"""Evaluations of a trained MM1 model; each records the protocol it used next to its scores."""

from mm1core.eval.heldout import EvalResult, evaluate_heldout

__all__ = ["EvalResult", "evaluate_heldout"]
