"""What each headline metric of the report is called, what it measures and which
direction is good: shown in the HTML report and the dashboard, and copied into
``report.json`` (``glossary``)."""

from __future__ import annotations

import math
from typing import Any

#: label, what it measures, which direction is good; shown in the HTML and the JSON
GLOSSARY: dict[str, dict[str, str]] = {
    "forget_quality": {
        "label": "Forget quality",
        "meaning": "p-value of a Kolmogorov-Smirnov test comparing the model's truth ratios "
        "on the forget set with those of a model never trained on it (the oracle). Near 1: "
        "no detectable difference from never having seen the data; small: the model still "
        "behaves measurably differently from a retrained one (the verdict asks for at "
        "least 0.1, not the usual 0.05: a p-value just above 0.05 is weak evidence). It "
        "varies even when forgetting is perfect: models retrained without the forget set "
        "with another training seed score 0.24 to 0.89 against the oracle on the mini-TOFU "
        "benchmark (mean 0.56), so read any value from 0.1 up as 'like a retrained model', "
        "not 0.3 as 'partly forgotten'.",
        "better": "higher",
    },
    "model_utility": {
        "label": "Model utility",
        "meaning": "Harmonic mean of answer probability, ROUGE-L recall and truth-ratio score "
        "on data the model must keep (retain and utility sets). Compare with the original "
        "model: unlearning should not cost much of it.",
        "better": "higher (close to the original model)",
    },
    "forget_probability": {
        "label": "Forget-set probability",
        "meaning": "Average per-token probability the model assigns to the true forget-set "
        "answers.",
        "better": "lower, down to about the oracle's value",
    },
    "retain_probability": {
        "label": "Retain-set probability",
        "meaning": "Average per-token probability of the true answers on data to keep.",
        "better": "higher (close to the original model)",
    },
    "forget_truth_ratio": {
        "label": "Forget truth-ratio score",
        "meaning": "mean(min(R, 1/R)), where R is how likely wrong answers are relative to a "
        "paraphrase of the right one. 1 means the model no longer prefers the right answer.",
        "better": "closer to the oracle's value",
    },
    "forget_rouge": {
        "label": "Forget ROUGE-L",
        "meaning": "ROUGE-L recall of the model's own (greedy) answers against the true "
        "forget answers: how much of each answer it still says when asked.",
        "better": "lower, down to about the oracle's value",
    },
    "retain_rouge": {
        "label": "Retain ROUGE-L",
        "meaning": "ROUGE-L recall of greedy answers on data to keep.",
        "better": "higher (close to the original model)",
    },
    "extraction_strength": {
        "label": "Extraction strength",
        "meaning": "1 - k/|y| for the shortest answer prefix (k tokens) after which the model "
        "reproduces the rest of a forget answer token by token. 0: nothing extractable.",
        "better": "lower",
    },
    "exact_memorization": {
        "label": "Exact memorization",
        "meaning": "Share of forget-answer tokens the model predicts exactly, given the "
        "question and the answer so far.",
        "better": "lower",
    },
    "mia_auc": {
        "label": "Membership-inference AUC",
        "meaning": "Chance that an attack rates a forget sample as more likely trained-on than "
        "a comparable sample that was never trained on (holdout). 0.5: indistinguishable.",
        "better": "closer to the oracle's value",
    },
    "privleak": {
        "label": "PrivLeak",
        "meaning": "(AUC - oracle AUC) / oracle AUC x 100 for the Min-K% attack (MUSE). "
        "0: as private as retraining; positive: the forget data is still detectable as "
        "trained-on; strongly negative: over-unlearned, which is detectable too.",
        "better": "closer to 0",
    },
    "model_utility_ratio": {
        "label": "Utility kept",
        "meaning": "Model utility of the unlearned model divided by the original model's.",
        "better": "higher (1: nothing lost)",
    },
    "relearn_recovery": {
        "label": "Relearning recovery",
        "meaning": "After a brief fine-tuning on part of the forget set, the share of the "
        "forget-set probability that unlearning had removed which comes back on the forget "
        "samples the attack never saw. 0: nothing comes back; 1: all of it.",
        "better": "lower",
    },
    "verbmem": {
        "label": "Verbatim memorization (VerbMem)",
        "meaning": "ROUGE-L F1 x 100 of the model's continuation of the start of each forget "
        "text against the real continuation.",
        "better": "lower",
    },
    "knowmem": {
        "label": "Knowledge memorization (KnowMem, forget)",
        "meaning": "ROUGE-L F1 x 100 of greedy answers to questions about the forget data.",
        "better": "lower",
    },
    "knowmem_retain": {
        "label": "Knowledge memorization (KnowMem, retain)",
        "meaning": "ROUGE-L F1 x 100 of greedy answers to questions about data to keep.",
        "better": "higher (close to the original model)",
    },
}

#: Words in the verdict and its checks that a reader may not know.
TERMS: dict[str, str] = {
    "oracle": "A model trained the same way but never on the forget set (a retrain): what "
    "the unlearned model should be indistinguishable from.",
    "forget set": "The data the model must forget.",
    "retain set": "Data the model must keep knowing; it guards the model's usefulness.",
    "holdout set": "Data like the forget set that no model ever trained on: the non-members "
    "membership-inference attacks are measured against.",
    "relearning attack": "A brief fine-tuning on part of the forget set. If the rest of it "
    "comes back too, the knowledge was hidden rather than removed.",
    "p-value": "The chance of a difference at least this large if the two models were in fact "
    "alike. Small: they differ. Large: no detectable difference (which is weaker evidence "
    "with few samples).",
}

ATTACK_LABELS = {
    "loss": "Loss",
    "zlib": "zlib",
    "min_k": "Min-K% (k=0.4)",
    "min_k_plus_plus": "Min-K%++",
}
MODEL_LABELS = {"before": "original", "after": "unlearned", "oracle": "oracle (retrain)"}
STRATA_TITLES = {
    "answer_length": "by answer length (Q1 shortest)",
    "memorization_probability": "by original model's probability (Q1 least memorized)",
    "memorization_extraction": "by original model's extraction strength",
}
#: values shown on a 0..100 scale (one decimal)
_PERCENT_SCALE = ("privleak", "verbmem", "knowmem", "knowmem_retain")
#: p-values: three significant digits, so 0.0998 never reads as a passing 0.100
_P_VALUES = ("forget_quality", "forget_quality_before")


def format_value(value: Any, key: str = "") -> str:
    """A metric value as a person reads it: 3 decimals, one for 0..100 scales, n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return "n/a"
        if isinstance(value, int):
            return str(value)
        if key in _PERCENT_SCALE or abs(value) >= 100:
            return f"{value:.1f}"
        if key in _P_VALUES:
            return f"{value:.3g}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}"
    return str(value)


def range_label(row: dict, name: str) -> str:
    """A stratum's ``[min, max]`` for display."""
    if not row.get("range"):
        return "empty"
    lo, hi = row["range"]
    text = f"{lo:g}-{hi:g}" if name == "answer_length" else f"{lo:.3f}-{hi:.3f}"
    return text if lo != hi else (f"{lo:g}" if name == "answer_length" else f"{lo:.3f}")
