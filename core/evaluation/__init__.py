"""Proof of forgetting: TOFU- and MUSE-style evaluation of one model, comparison of the
original, unlearned and oracle (retrained) models, and the report.

Importing this package does not import torch; scoring a model does.
"""

from core.evaluation.evaluate import (
    HEADLINE_KEYS,
    RESULT_SCHEMA_VERSION,
    EvaluationResult,
    EvaluationSets,
    SetResult,
    compare,
    evaluate_model,
    subsample_indices,
)
from core.evaluation.report import REPORT_SCHEMA_VERSION, write_report

__all__ = [
    "HEADLINE_KEYS",
    "REPORT_SCHEMA_VERSION",
    "RESULT_SCHEMA_VERSION",
    "EvaluationResult",
    "EvaluationSets",
    "SetResult",
    "compare",
    "evaluate_model",
    "subsample_indices",
    "write_report",
]
