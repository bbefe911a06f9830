"""The cheap measurement taken at every evaluation point of a training run.

Teacher-forced scores, on capped samples of the forget set, the holdout set (records of
the same form that the model never trained on), the retain set and the utility sets; no
generation, except ROUGE-L of the retain and utility answers where asked (``rouge_tokens``:
the utility estimate that confirms one near the floor, so that it has the report's model
utility's components). Per sample it keeps what the verdict needs: the answer's
length-normalized probability, the truth ratio where the records have paraphrased and
perturbed answers, and the membership-inference scores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data.records import RecordSet
from core.evaluation import metrics
from core.evaluation.evaluate import subsample_indices

#: per-sample columns a probe keeps (the rest of what scoring returns is dropped)
PROBE_COLUMNS = (
    "probability",
    "truth_ratio",
    "n_tokens",
    "rouge_recall",
    *(f"mia_{a}" for a in metrics.MIA_ATTACKS),
)


@dataclass
class ProbeSets:
    forget: RecordSet | None
    holdout: RecordSet | None = None
    retain: RecordSet | None = None
    utility: dict[str, RecordSet] = field(default_factory=dict)

    def items(self) -> list[tuple[str, RecordSet]]:
        pairs = [("forget", self.forget)] if self.forget is not None else []
        if self.holdout is not None:
            pairs.append(("holdout", self.holdout))
        if self.retain is not None:
            pairs.append(("retain", self.retain))
        pairs += [(f"utility/{name}", records) for name, records in self.utility.items()]
        return pairs


@dataclass
class Probe:
    """One model's probe: per-set sample columns (``columns[set][column]``)."""

    columns: dict[str, dict[str, list[float]]]
    seconds: float = 0.0

    def column(self, set_name: str, name: str) -> np.ndarray | None:
        values = self.columns.get(set_name, {}).get(name)
        if values is None:
            return None
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)

    def mean(self, set_name: str, name: str) -> float | None:
        values = self.column(set_name, name)
        if values is None:
            return None
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else None

    def utility_components(self) -> dict[str, dict[str, float]]:
        """TOFU's generation-free utility values per retain/utility set: probability
        and the retain-side truth-ratio score."""
        out: dict[str, dict[str, float]] = {}
        for name in self.columns:
            if name != "retain" and not name.startswith("utility/"):
                continue
            values = {"probability": self.mean(name, "probability")}
            rouge = self.mean(name, "rouge_recall")
            if rouge is not None:
                values["rouge_recall"] = rouge
            ratios = self.column(name, "truth_ratio")
            if ratios is not None:
                values["truth_ratio"] = metrics.truth_ratio_retain_score(ratios)
            out[name] = {k: v for k, v in values.items() if v is not None}
        return out

    def utility_parts(self, original: Probe) -> dict[str, float]:
        """Each utility component against ``original``'s on the same records, keyed
        ``set/component`` (``retain/probability``, ``utility/world_facts/truth_ratio``):
        which part of utility a model lost, where the ratio of the harmonic means hides it.
        """
        theirs = original.prefix_like(self).utility_components()
        return metrics.utility_parts(self.utility_components(), theirs)

    def utility(self) -> float | None:
        components = self.utility_components()
        if not any(components.values()):
            return None
        return metrics.model_utility(components)

    def prefix_like(self, other: Probe) -> Probe:
        """This probe cut, set by set, to as many samples as ``other`` holds, and to the
        columns ``other`` has: its scores on the same records, measured alike, when
        ``other`` scored a prefix of this probe's sets."""
        columns = {}
        for name, theirs in other.columns.items():
            ours = self.columns.get(name)
            if ours is None:
                continue
            n = len(next(iter(theirs.values()), []))
            columns[name] = {key: values[:n] for key, values in ours.items() if key in theirs}
        return Probe(columns=columns)

    def with_columns(self, other: Probe, names: tuple[str, ...]) -> Probe:
        """This probe with ``other``'s columns ``names`` added, set by set (``other``
        scored the same records in the same order)."""
        columns = {name: dict(sets) for name, sets in self.columns.items()}
        for name, theirs in other.columns.items():
            for key in names:
                if key in theirs and name in columns:
                    columns[name][key] = list(theirs[key])
        return Probe(columns=columns, seconds=self.seconds + other.seconds)

    def extended(self, other: Probe) -> Probe:
        """This probe's samples followed by ``other``'s, set by set."""
        columns = {
            name: {k: list(v) for k, v in sets.items()} for name, sets in self.columns.items()
        }
        for name, theirs in other.columns.items():
            mine = columns.setdefault(name, {key: [] for key in theirs})
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)
        return Probe(columns=columns, seconds=self.seconds + other.seconds)

    def with_sets(self, other: Probe) -> Probe:
        """This probe and ``other``'s sets (which it does not hold) as one."""
        return Probe(
            columns={**self.columns, **other.columns}, seconds=self.seconds + other.seconds
        )

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        return cls(columns=data["columns"], seconds=data.get("seconds", 0.0))


def sample_sets(sets: ProbeSets, max_samples: int, seed: int = 0) -> ProbeSets:
    """Every set capped at ``max_samples`` records, the same subset for every model."""

    def cap(records: RecordSet | None) -> RecordSet | None:
        if records is None or len(records) <= max_samples:
            return records
        chosen = subsample_indices(len(records), max_samples, seed)
        return RecordSet(
            name=records.name,
            format=records.format,
            kind=records.kind,
            records=[records.records[i] for i in chosen],
            sha256=records.sha256,
            size_bytes=records.size_bytes,
            columns=records.columns,
        )

    return ProbeSets(
        forget=cap(sets.forget),
        holdout=cap(sets.holdout),
        retain=cap(sets.retain),
        utility={name: cap(records) for name, records in sets.utility.items()},
    )


def split_utility_sets(sets: ProbeSets, n: int) -> tuple[ProbeSets, ProbeSets | None]:
    """The retain and utility sets of ``sets`` as their first ``n`` records and the rest
    (None when nothing is left over): a quick estimate, and what confirms it."""

    def part(records: RecordSet | None, start: int, stop: int | None) -> RecordSet | None:
        if records is None:
            return None
        return RecordSet(
            name=records.name,
            format=records.format,
            kind=records.kind,
            records=records.records[start:stop],
            sha256=records.sha256,
            size_bytes=records.size_bytes,
            columns=records.columns,
        )

    head = ProbeSets(
        forget=None,
        retain=part(sets.retain, 0, n),
        utility={name: part(records, 0, n) for name, records in sets.utility.items()},
    )
    rest_retain = part(sets.retain, n, None)
    rest_utility = {
        name: part(records, n, None) for name, records in sets.utility.items() if len(records) > n
    }
    if rest_retain is not None and not len(rest_retain):
        rest_retain = None
    if rest_retain is None and not rest_utility:
        return head, None
    return head, ProbeSets(forget=None, retain=rest_retain, utility=rest_utility)


def utility_stages(
    sets: ProbeSets, quick: int, confirm: int
) -> tuple[ProbeSets, ProbeSets | None, ProbeSets | None]:
    """The retain and utility sets of ``sets`` as their first ``quick`` records, the next
    ones up to ``confirm``, and the rest (None where nothing is left): the estimate, what
    confirms it, and what measures it at the floor's edge."""
    head, rest = split_utility_sets(sets, quick)
    if rest is None:
        return head, None, None
    middle, tail = split_utility_sets(rest, confirm - quick)
    return head, middle, tail


def probe_model(
    model,
    tokenizer,
    sets: ProbeSets,
    *,
    template: str,
    max_length: int,
    batch_size: int = 64,
    min_k: float = metrics.DEFAULT_MIN_K_FRACTION,
    truth_ratio: bool = True,
    rouge_tokens: int = 0,
) -> Probe:
    """Score ``model`` on every set of ``sets`` (already capped): truth ratios where the
    records have the fields, unless ``truth_ratio`` is False; with ``rouge_tokens`` each
    question-answer record is also answered greedily (that many new tokens) and scored
    with ROUGE-L recall, as the report's evaluation does."""
    from core.evaluation import scoring

    started = time.perf_counter()
    columns: dict[str, dict[str, list[float]]] = {}
    with scoring_mode(model):
        for name, records in sets.items():
            if records.kind == "text":
                scored = scoring.score_text_records(
                    model,
                    tokenizer,
                    records.records,
                    max_length=max_length,
                    batch_size=batch_size,
                    verbmem=False,
                    prefix_tokens=0,
                    max_new_tokens=0,
                    min_k=min_k,
                )
            else:
                scored = scoring.score_qa_records(
                    model,
                    tokenizer,
                    records.records,
                    template=template,
                    max_length=max_length,
                    batch_size=batch_size,
                    truth_ratio=truth_ratio and records.has_truth_ratio_fields,
                    generate=rouge_tokens > 0,
                    max_new_tokens=max(rouge_tokens, 1),
                    knowmem_max_new_tokens=1,
                    min_k=min_k,
                )
            columns[name] = {k: v for k, v in scored.items() if k in PROBE_COLUMNS}
    return Probe(columns=columns, seconds=time.perf_counter() - started)


def with_rouge(
    probe: Probe, model, tokenizer, sets: ProbeSets, rouge_tokens: int, **kwargs
) -> Probe:
    """``probe`` with the ROUGE-L recall of ``model``'s greedy answers on the retain and
    utility sets of ``sets`` (the records ``probe`` scored, in the same order): the
    generated part of the report's model utility. ``kwargs``: ``probe_model``'s."""
    answered = probe_model(
        model,
        tokenizer,
        ProbeSets(forget=None, retain=sets.retain, utility=sets.utility),
        truth_ratio=False,
        rouge_tokens=rouge_tokens,
        **kwargs,
    )
    return probe.with_columns(answered, ("rouge_recall",))


@contextmanager
def scoring_mode(model) -> Iterator[None]:
    """``model`` in eval mode (no dropout) on its CPU thread setting while scoring, and
    back to training mode after, for a probe taken in the middle of a run."""
    from core.runtime import cpu_threads_for

    was_training = model.training
    model.eval()
    try:
        with cpu_threads_for(model):
            yield
    finally:
        model.train(was_training)
