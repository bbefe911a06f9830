"""Proof of forgetting: TOFU- and MUSE-style evaluation of one model, comparison of the
original, unlearned and oracle (retrained) models, and the report.

Importing this package imports nothing heavy: the names below load their modules on
first use (PEP 562), so the API can read ``glossary`` and ``verdict`` without numpy or
scipy, and scoring a model is what imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "HEADLINE_KEYS": "core.evaluation.evaluate",
    "RESULT_SCHEMA_VERSION": "core.evaluation.evaluate",
    "EvaluationResult": "core.evaluation.evaluate",
    "EvaluationSets": "core.evaluation.evaluate",
    "SetResult": "core.evaluation.evaluate",
    "compare": "core.evaluation.evaluate",
    "evaluate_model": "core.evaluation.evaluate",
    "subsample_indices": "core.evaluation.evaluate",
    "REPORT_SCHEMA_VERSION": "core.evaluation.report",
    "write_report": "core.evaluation.report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.evaluation' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
