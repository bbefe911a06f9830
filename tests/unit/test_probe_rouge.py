"""The utility estimate that confirms a verdict probe near the floor has the report's
model utility's components: ROUGE-L of greedy answers besides probability and the truth
ratio score. Checked against the report's own evaluation (``evaluate_model``) of the same
records, a separate path through scoring and aggregation."""

from __future__ import annotations

import pytest

from core.data.records import read_records
from core.evaluation import EvaluationSets, evaluate_model
from core.evaluation.probe import ProbeSets, probe_model, sample_sets, with_rouge
from core.evaluation.verdict import evaluation_utility
from core.models.loading import load_model
from core.spec import DEFAULT_PROMPT_TEMPLATE, EvaluationSpec

SAMPLES = 12


@pytest.mark.parametrize("name", ["target", "retrain"])
def test_a_probe_with_rouge_measures_the_reports_model_utility(tiny_demo, name):
    spec = EvaluationSpec(max_samples=SAMPLES, max_new_tokens=24, batch_size=8)
    full = ProbeSets(
        forget=read_records(tiny_demo.data["forget10"]),
        retain=read_records(tiny_demo.data["retain90"]),
        utility={"world_facts": read_records(tiny_demo.data["world_facts"])},
    )
    sets = sample_sets(full, SAMPLES, spec.sample_seed)  # the report's subsample
    model, tokenizer = load_model(str(getattr(tiny_demo, name)), dtype="fp32")
    kwargs = {"template": DEFAULT_PROMPT_TEMPLATE, "max_length": 64}
    utility_sets = ProbeSets(forget=None, retain=sets.retain, utility=sets.utility)

    plain = probe_model(model, tokenizer, utility_sets, **kwargs)
    probe = with_rouge(plain, model, tokenizer, utility_sets, spec.max_new_tokens, **kwargs)
    report = evaluate_model(
        model,
        tokenizer,
        EvaluationSets(forget=full.forget, retain=full.retain, utility=full.utility),
        spec,
        **kwargs,
    )
    assert probe.utility() == pytest.approx(report.metrics["model_utility"], rel=1e-6)
    # and the final verdict's utility is the same figure
    assert evaluation_utility(report) == pytest.approx(report.metrics["model_utility"], rel=1e-9)
    # without ROUGE the probe measures something else (on this model, by this much)
    assert plain.utility() != pytest.approx(report.metrics["model_utility"], rel=1e-6)
