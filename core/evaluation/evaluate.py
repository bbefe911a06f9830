"""Evaluate one model on the job's sets, and compare before / after / oracle.

``evaluate_model`` measures one model and keeps every per-sample statistic, so that
an oracle (a model retrained without the forget set) is evaluated once and its stored
result reused by later comparisons (``EvaluationResult.to_dict`` / ``from_dict``).
``compare`` then needs no model at all: forget quality (KS test of truth ratios
against the oracle's), model utility, PrivLeak and the strata of the SimNPO paper
(forgetting by answer length and by how strongly the original model memorized).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.data.records import RecordSet
from core.evaluation import metrics
from core.runtime import cpu_threads_for
from core.spec import EvaluationSpec

#: version of ``EvaluationResult.to_dict()`` (and of report.json, which embeds it)
RESULT_SCHEMA_VERSION = "1.0"

#: headline metrics, in report order; compare() returns each (None when not applicable)
HEADLINE_KEYS = (
    "forget_quality",
    "model_utility",
    "forget_probability",
    "retain_probability",
    "forget_truth_ratio",
    "forget_rouge",
    "retain_rouge",
    "extraction_strength",
    "exact_memorization",
    "mia_auc",
    "privleak",
    "verbmem",
    "knowmem",
    "knowmem_retain",
)
#: the attack PrivLeak is reported for, as MUSE does (Min-K%, k = 0.4)
PRIVLEAK_ATTACK = "min_k"
STRATA_BINS = 4


@dataclass
class EvaluationSets:
    """The data one evaluation runs on.

    ``holdout`` is data the model never trained on, drawn like the forget set: the
    membership-inference attacks try to tell forget from holdout. ``utility`` holds
    extra sets for model utility (TOFU: real authors, world facts). ``knowmem_forget``
    / ``knowmem_retain`` are question/answer sets about a raw-text forget/retain corpus
    (MUSE KnowMem); for a question/answer forget set KnowMem is measured on it directly.
    """

    forget: RecordSet
    retain: RecordSet | None = None
    holdout: RecordSet | None = None
    utility: dict[str, RecordSet] = field(default_factory=dict)
    knowmem_forget: RecordSet | None = None
    knowmem_retain: RecordSet | None = None

    @classmethod
    def coerce(cls, sets: EvaluationSets | Mapping[str, Any]) -> EvaluationSets:
        if isinstance(sets, EvaluationSets):
            return sets
        unknown = set(sets) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown evaluation sets {sorted(unknown)}")
        values = {key: value for key, value in sets.items() if value is not None}
        values["utility"] = dict(values.get("utility") or {})
        return cls(**values)


@dataclass
class SetResult:
    """Per-sample columns and aggregates of one model on one set.

    ``samples`` maps a column name to one value per evaluated sample; ``index`` is the
    sample's position in the full set (identical across models: subsampling is
    deterministic), ``line`` its line in the source file.
    """

    role: str
    name: str
    kind: str
    sha256: str
    n_records: int
    samples: dict[str, list]
    aggregates: dict[str, Any]

    @property
    def n_samples(self) -> int:
        return len(self.samples["index"])

    def column(self, name: str) -> np.ndarray | None:
        values = self.samples.get(name)
        if values is None:
            return None
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


@dataclass
class EvaluationResult:
    """One model's evaluation: per-set results (keys ``forget``, ``retain``,
    ``holdout``, ``utility/<name>``, ``knowmem_forget``, ``knowmem_retain``) and the
    model's headline metrics."""

    sets: dict[str, SetResult]
    metrics: dict[str, Any]
    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model_info: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    schema_version: str = RESULT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (NaN and infinities become null)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        version = str(data.get("schema_version", ""))
        if version.split(".")[0] != RESULT_SCHEMA_VERSION.split(".")[0]:
            raise ValueError(
                f"evaluation result schema {version!r} is not readable by this version "
                f"(expects {RESULT_SCHEMA_VERSION})"
            )
        fields = dict(data)
        fields["sets"] = {key: SetResult(**value) for key, value in data["sets"].items()}
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in fields.items() if key in known})


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


# --- evaluating one model ---------------------------------------------------------------


def subsample_indices(n_records: int, max_samples: int, seed: int) -> list[int]:
    """A fixed random subset (sorted), the same for every model evaluated with the same
    spec. Random rather than evenly spaced: TOFU-style files list each author's
    questions in a fixed order, so a stride would pick the same question types."""
    if n_records <= max_samples:
        return list(range(n_records))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_records, size=max_samples, replace=False).tolist())


def _mean(values) -> float | None:
    if values is None:
        return None
    array = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else None


def _aggregate(columns: dict[str, list]) -> dict[str, Any]:
    ratios = columns.get("truth_ratio")
    aggregates = {
        "probability": _mean(columns["probability"]),
        "extraction_strength": _mean(columns["extraction_strength"]),
        "exact_memorization": _mean(columns["exact_memorization"]),
        "truth_ratio_forget_score": metrics.truth_ratio_forget_score(ratios) if ratios else None,
        "truth_ratio_retain_score": metrics.truth_ratio_retain_score(ratios) if ratios else None,
        "rouge_recall": _mean(columns.get("rouge_recall")),
        "rouge_f1": _mean(columns.get("rouge_f1")),
    }
    knowmem = _mean(columns.get("knowmem_f1"))
    aggregates["knowmem"] = None if knowmem is None else 100.0 * knowmem
    verbmem = _mean(columns.get("verbmem_f1"))
    aggregates["verbmem"] = None if verbmem is None else 100.0 * verbmem
    return aggregates


def _evaluate_set(
    model,
    tokenizer,
    role: str,
    records: RecordSet,
    spec: EvaluationSpec,
    *,
    template: str,
    max_length: int,
    likelihood_only: bool,
    notes: list[str],
) -> SetResult:
    from core.evaluation import scoring

    indices = subsample_indices(len(records), spec.max_samples, spec.sample_seed)
    chosen = [records.records[i] for i in indices]
    if records.kind == "text":
        columns = scoring.score_text_records(
            model,
            tokenizer,
            chosen,
            max_length=max_length,
            batch_size=spec.batch_size,
            verbmem=spec.generate and role == "forget" and not likelihood_only,
            prefix_tokens=spec.verbmem_prefix_tokens,
            max_new_tokens=spec.verbmem_max_new_tokens,
            min_k=spec.min_k_fraction,
        )
    else:
        # Holdout too (it is scored without generation): the verdict compares truth ratios.
        with_truth_ratio = records.has_truth_ratio_fields
        if not records.has_truth_ratio_fields and role in ("forget", "retain"):
            notes.append(
                f"{role} set {records.name!r} lacks paraphrased_answer/perturbed_answer on "
                "some records: no truth ratio"
                + (", so no forget quality" if role == "forget" else "")
            )
        columns = scoring.score_qa_records(
            model,
            tokenizer,
            chosen,
            template=template,
            max_length=max_length,
            batch_size=spec.batch_size,
            truth_ratio=with_truth_ratio,
            generate=spec.generate and not likelihood_only,
            max_new_tokens=spec.max_new_tokens,
            knowmem_max_new_tokens=spec.knowmem_max_new_tokens,
            min_k=spec.min_k_fraction,
        )
    aggregates = _aggregate(columns)
    if spec.store_generations is False:  # None: not decided by a job spec, keep
        columns.pop("generation", None)
        columns.pop("verbmem_generation", None)
    samples = {"index": indices, "line": [r.line for r in chosen], **columns}
    return SetResult(
        role=role,
        name=records.name,
        kind=records.kind,
        sha256=records.sha256,
        n_records=len(records),
        samples=samples,
        aggregates=aggregates,
    )


def _utility_components(result: SetResult) -> dict[str, float]:
    """The TOFU utility values a set contributes: probability, ROUGE-L recall and the
    retain-side truth-ratio score, each where measured."""
    components = {
        "probability": result.aggregates["probability"],
        "rouge_recall": result.aggregates["rouge_recall"],
        "truth_ratio": result.aggregates["truth_ratio_retain_score"],
    }
    return {key: value for key, value in components.items() if value is not None}


def model_metrics(sets: dict[str, SetResult]) -> tuple[dict[str, Any], list[str]]:
    """A single model's headline metrics from its set results (no oracle needed)."""
    notes: list[str] = []
    forget, retain = sets["forget"], sets.get("retain")
    values: dict[str, Any] = {
        "forget_probability": forget.aggregates["probability"],
        "retain_probability": retain.aggregates["probability"] if retain else None,
        "forget_truth_ratio": forget.aggregates["truth_ratio_forget_score"],
        "retain_truth_ratio": retain.aggregates["truth_ratio_retain_score"] if retain else None,
        "forget_rouge": forget.aggregates["rouge_recall"],
        "retain_rouge": retain.aggregates["rouge_recall"] if retain else None,
        "extraction_strength": forget.aggregates["extraction_strength"],
        "exact_memorization": forget.aggregates["exact_memorization"],
        "verbmem": forget.aggregates["verbmem"],
    }
    knowmem_forget = sets.get("knowmem_forget") or (forget if forget.kind != "text" else None)
    values["knowmem"] = knowmem_forget.aggregates["knowmem"] if knowmem_forget else None
    knowmem_retain = sets.get("knowmem_retain") or (
        retain if retain and retain.kind != "text" else None
    )
    values["knowmem_retain"] = knowmem_retain.aggregates["knowmem"] if knowmem_retain else None

    components = {
        key: _utility_components(result)
        for key, result in sets.items()
        if key == "retain" or key.startswith("utility/")
    }
    components = {key: value for key, value in components.items() if value}
    values["model_utility_components"] = components
    values["model_utility"] = metrics.model_utility(components) if components else None
    if not components:
        notes.append("no retain or utility set: model utility is not measured")

    holdout = sets.get("holdout")
    if holdout is None:
        values["mia_auc"] = None
        notes.append("no holdout set: membership-inference AUC and PrivLeak are not measured")
    else:
        values["mia_auc"] = {
            attack: metrics.roc_auc(forget.column(f"mia_{attack}"), holdout.column(f"mia_{attack}"))
            for attack in metrics.MIA_ATTACKS
        }
    return values, notes


def evaluate_model(
    model,
    tokenizer,
    sets: EvaluationSets | Mapping[str, Any],
    spec: EvaluationSpec,
    *,
    template: str,
    max_length: int,
) -> EvaluationResult:
    """Measure one model on the forget set and whichever other sets are given.

    Every set is subsampled to ``spec.max_samples`` the same way for every model, so
    results of the original, unlearned and oracle models line up sample by sample.
    """
    sets = EvaluationSets.coerce(sets)
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    notes: list[str] = []
    todo: list[tuple[str, RecordSet, bool]] = [("forget", sets.forget, False)]
    if sets.retain is not None:
        todo.append(("retain", sets.retain, False))
    if sets.holdout is not None:
        todo.append(("holdout", sets.holdout, True))
    for name, records in sets.utility.items():
        todo.append((f"utility/{name}", records, False))
    if sets.knowmem_forget is not None:
        todo.append(("knowmem_forget", sets.knowmem_forget, False))
    if sets.knowmem_retain is not None:
        todo.append(("knowmem_retain", sets.knowmem_retain, False))
    results: dict[str, SetResult] = {}
    timings: dict[str, float] = {}
    try:
        with cpu_threads_for(model):
            for key, records, likelihood_only in todo:
                set_started = time.perf_counter()
                results[key] = _evaluate_set(
                    model,
                    tokenizer,
                    key.split("/")[0],
                    records,
                    spec,
                    template=template,
                    max_length=max_length,
                    likelihood_only=likelihood_only,
                    notes=notes,
                )
                timings[key] = time.perf_counter() - set_started
    finally:
        model.train(was_training)
    values, metric_notes = model_metrics(results)
    if not spec.generate:
        notes.append("generation disabled: no ROUGE-L, VerbMem or KnowMem")
    parameters = sum(p.numel() for p in model.parameters())
    return EvaluationResult(
        sets=results,
        metrics=values,
        spec=spec.model_dump(mode="json"),
        notes=notes + metric_notes,
        seconds=time.perf_counter() - started,
        model_info={
            "class": type(model).__name__,
            "parameters": int(parameters),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "seconds_per_set": timings,
        },
    )


# --- comparing models -------------------------------------------------------------------


def _forget_truth_ratios(result: EvaluationResult) -> np.ndarray | None:
    return result.sets["forget"].column("truth_ratio")


def _forget_quality(
    unlearned: EvaluationResult, oracle: EvaluationResult | None, more_oracles=()
) -> tuple[float | None, str | None]:
    """The KS p-value of the model's forget truth ratios against the oracle's, or against
    the truth ratios of several oracles pooled (``more_oracles`` beside the first: the
    ones evaluated on the same forget set); None and why where it cannot be computed."""
    if oracle is None:
        return None, (
            "no oracle was given: forget quality compares against a model never trained on "
            "the forget set (a retrain), and is undefined without one"
        )
    ours, theirs = unlearned.sets["forget"], oracle.sets["forget"]
    if ours.sha256 != theirs.sha256:
        return None, (
            f"the oracle was evaluated on a different forget set ({theirs.name}, sha256 "
            f"{theirs.sha256[:12]}) than this model ({ours.name}, sha256 {ours.sha256[:12]})"
        )
    ours_tr, theirs_tr = _forget_truth_ratios(unlearned), _forget_truth_ratios(oracle)
    if ours_tr is None or theirs_tr is None:
        return None, (
            "the forget set has no paraphrased/perturbed answers, so there are no truth "
            "ratios to compare"
        )
    pooled = [theirs_tr, *(ratios for _, ratios in _usable_oracles(unlearned, more_oracles))]
    return metrics.forget_quality(ours_tr, np.concatenate(pooled)), None


def _usable_oracles(unlearned: EvaluationResult, oracles) -> list[tuple[int, np.ndarray]]:
    """``(position, forget truth ratios)`` of the oracles evaluated on the model's forget
    set, with truth ratios; the others cannot be pooled (``forget_quality_by_oracle``
    says None for them)."""
    usable = []
    for position, oracle in enumerate(oracles):
        if oracle.sets["forget"].sha256 != unlearned.sets["forget"].sha256:
            continue
        ratios = _forget_truth_ratios(oracle)
        if ratios is not None:
            usable.append((position, ratios))
    return usable


def _oracle_pool(
    unlearned: EvaluationResult, oracle: EvaluationResult | None, more_oracles
) -> dict[str, Any]:
    """What pooling several oracles adds to the comparison: the forget quality against
    each oracle alone, how many were pooled, and the first oracle's forget quality
    against the others (what a model that never saw the forget set scores here: the
    scale the pooled figure is read on). Empty with one oracle."""
    if oracle is None or not more_oracles:
        return {}
    every = [oracle, *more_oracles]
    usable = {position for position, _ in _usable_oracles(unlearned, every)}
    first_usable = 0 in usable
    return {
        "forget_quality_by_oracle": [
            _forget_quality(unlearned, each)[0] if position in usable and first_usable else None
            for position, each in enumerate(every)
        ],
        "forget_quality_oracles": len(usable) if first_usable else 0,
        "oracle_forget_quality": (
            _forget_quality(oracle, more_oracles[0], more_oracles[1:])[0]
            if first_usable and len(usable) > 1
            else None
        ),
    }


def _privleak(
    unlearned: EvaluationResult, oracle: EvaluationResult | None
) -> tuple[dict[str, float] | None, str | None]:
    if oracle is None:
        return None, "no oracle was given: PrivLeak is relative to a retrained model's AUC"
    ours, theirs = unlearned.metrics.get("mia_auc"), oracle.metrics.get("mia_auc")
    if not ours or not theirs:
        return None, "PrivLeak needs a holdout set in both this and the oracle's evaluation"
    if unlearned.sets["holdout"].sha256 != oracle.sets["holdout"].sha256:
        return None, "the oracle was evaluated on a different holdout set"
    return {
        attack: metrics.privleak(ours[attack], theirs[attack]) if theirs[attack] > 0 else None
        for attack in ours
    }, None


def _aligned(result: EvaluationResult | None, column: str, indices: list[int]) -> np.ndarray:
    """A forget-set column ordered by ``indices``; NaN where the sample is missing."""
    if result is None:
        return np.full(len(indices), np.nan)
    forget = result.sets["forget"]
    values = forget.column(column)
    if values is None:
        return np.full(len(indices), np.nan)
    position = {index: i for i, index in enumerate(forget.samples["index"])}
    return np.asarray([values[position[i]] if i in position else np.nan for i in indices])


STRATA_KEYS = {
    "answer_length": "answer length in tokens",
    "memorization_probability": "the original model's probability of the answer",
    "memorization_extraction": "the original model's extraction strength",
}


def _strata(
    before: EvaluationResult,
    after: EvaluationResult,
    oracle: EvaluationResult | None,
    more_oracles=(),
) -> dict[str, Any]:
    """Forget quality and forget probability per quartile of answer length and of the
    original model's memorization (its probability, its extraction strength): the
    SimNPO paper's analysis of whether short or weakly memorized answers are forgotten
    less evenly. Samples are matched across models by their index in the set."""
    indices = list(after.sets["forget"].samples["index"])
    after_tr = _aligned(after, "truth_ratio", indices)
    oracle_usable = oracle is not None and _forget_quality(after, oracle)[0] is not None
    # one row per usable oracle, each aligned with the model's samples: a stratum pools
    # the oracles' truth ratios of its samples, as the headline figure pools them all
    oracle_tr = np.stack(
        [_aligned(oracle, "truth_ratio", indices)]
        + [
            _aligned(more_oracles[position], "truth_ratio", indices)
            for position, _ in _usable_oracles(after, more_oracles)
        ]
    )
    probability = {
        "before": _aligned(before, "probability", indices),
        "after": _aligned(after, "probability", indices),
        "oracle": _aligned(oracle, "probability", indices),
    }
    keys = {
        "answer_length": _aligned(after, "n_tokens", indices),
        "memorization_probability": probability["before"],
        "memorization_extraction": _aligned(before, "extraction_strength", indices),
    }
    strata: dict[str, Any] = {}
    for name, key in keys.items():
        stratum: dict[str, Any] = {"by": STRATA_KEYS[name], "rows": [], "note": None}
        strata[name] = stratum
        known = np.isfinite(key)
        if len(np.unique(key[known])) < 2:
            stratum["note"] = (
                f"{STRATA_KEYS[name]} is the same for every sample"
                + (f" ({key[known][0]:g})" if known.any() else "")
                + ": nothing to stratify"
            )
            continue
        bins = np.full(len(indices), -1)
        bins[known] = metrics.quantile_bins(key[known], STRATA_BINS)
        for b in range(STRATA_BINS):
            members = bins == b
            row: dict[str, Any] = {"bin": b + 1, "n": int(members.sum())}
            row["range"] = (
                [float(key[members].min()), float(key[members].max())] if members.any() else None
            )
            for model_name, values in probability.items():
                row[f"forget_probability_{model_name}"] = _mean(values[members])
            fq = None
            if oracle_usable and members.any():
                ours = after_tr[members][np.isfinite(after_tr[members])]
                pooled = oracle_tr[:, members].ravel()
                theirs = pooled[np.isfinite(pooled)]
                if ours.size and theirs.size:
                    fq = metrics.forget_quality(ours, theirs)
            row["forget_quality"] = fq
            stratum["rows"].append(row)
        if oracle is not None and not oracle_usable:
            stratum["note"] = "no forget quality per stratum: " + str(
                _forget_quality(after, oracle)[1]
            )
    return strata


def compare(
    before: EvaluationResult,
    after: EvaluationResult,
    oracle: EvaluationResult | None,
    *,
    more_oracles: Sequence[EvaluationResult] = (),
) -> dict[str, Any]:
    """Headline metrics of the unlearned model (``after``), with the original model
    (``before``) and the oracle (a retrain never trained on the forget set) alongside.

    Forget quality and PrivLeak need the oracle; without one they are None and
    ``forget_quality_reason`` / ``privleak_reason`` say why. Everything else is
    reported regardless. ``more_oracles``: further retrains (other seeds); forget
    quality, before and after and per stratum, then compares with all of their truth
    ratios pooled (one retrain's seed alone moves it several-fold: docs/minitofu.md),
    and ``forget_quality_by_oracle`` gives it against each alone. PrivLeak and the
    oracle's own figures stay the first oracle's.
    """
    if before.sets["forget"].sha256 != after.sets["forget"].sha256:
        raise ValueError(
            "before and after were evaluated on different forget sets "
            f"({before.sets['forget'].name} vs {after.sets['forget'].name}); evaluate both "
            "models on the same sets"
        )
    fq, fq_reason = _forget_quality(after, oracle, more_oracles)
    fq_before, _ = _forget_quality(before, oracle, more_oracles)
    pool = _oracle_pool(after, oracle, more_oracles)
    leak, leak_reason = _privleak(after, oracle)
    leak_before, _ = _privleak(before, oracle)
    mu_before, mu_after = before.metrics["model_utility"], after.metrics["model_utility"]
    comparison: dict[str, Any] = {key: after.metrics.get(key) for key in HEADLINE_KEYS}
    comparison.update(
        forget_quality=fq,
        forget_quality_reason=fq_reason,
        forget_quality_before=fq_before,
        privleak=leak[PRIVLEAK_ATTACK] if leak else None,
        privleak_by_attack=leak,
        privleak_before=leak_before[PRIVLEAK_ATTACK] if leak_before else None,
        privleak_reason=leak_reason,
        model_utility_ratio=(mu_after / mu_before if mu_before and mu_after is not None else None),
        # The original's values beside the unlearned model's: the evidence an auditor
        # reads first (how likely and how extractable the answers were, and are now).
        forget_probability_before=before.metrics.get("forget_probability"),
        forget_rouge_before=before.metrics.get("forget_rouge"),
        extraction_strength_before=before.metrics.get("extraction_strength"),
        models={
            "before": {"forget_quality": fq_before, **before.metrics},
            "after": {"forget_quality": fq, **after.metrics},
            "oracle": (
                {
                    "forget_quality": pool.get(
                        "oracle_forget_quality", _forget_quality(oracle, oracle)[0]
                    ),
                    **oracle.metrics,
                }
                if oracle
                else None
            ),
        },
        strata=_strata(before, after, oracle, more_oracles),
        notes=sorted(
            set(
                before.notes
                + after.notes
                + [note for each in (oracle, *more_oracles) if each for note in each.notes]
            )
        ),
    )
    if pool:
        comparison.update(
            forget_quality_by_oracle=pool["forget_quality_by_oracle"],
            forget_quality_oracles=pool["forget_quality_oracles"],
        )
    return _json_safe(comparison)
