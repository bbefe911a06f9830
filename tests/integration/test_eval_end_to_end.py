"""evaluate_model -> compare -> write_report on tiny models, the report checked against
docs/report.md; and the demo target against its retrain oracle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from core.evaluation import (
    EvaluationResult,
    EvaluationSets,
    compare,
    evaluate_model,
    write_report,
)
from core.spec import DEFAULT_PROMPT_TEMPLATE, EvaluationSpec
from tests.unit.test_eval_scoring import (
    build_model,
    build_tokenizer,
    make_qa_records,
    make_text_records,
)

REPO = Path(__file__).resolve().parents[2]
EVAL_ARGS = dict(template=DEFAULT_PROMPT_TEMPLATE, max_length=96)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def sets():
    return EvaluationSets(
        forget=make_qa_records(12, seed=1, name="forget.jsonl"),
        retain=make_qa_records(30, seed=2, name="retain.jsonl"),
        holdout=make_qa_records(10, seed=5, name="holdout.jsonl"),
        utility={"world_facts": make_qa_records(8, seed=7, name="world.jsonl")},
    )


@pytest.fixture(scope="module")
def spec():
    return EvaluationSpec(max_samples=25, max_new_tokens=12, batch_size=8)


@pytest.fixture(scope="module")
def results(tokenizer, sets, spec):
    """Three different random models stand in for original, unlearned and oracle."""
    return {
        name: evaluate_model(build_model(tokenizer, seed=seed), tokenizer, sets, spec, **EVAL_ARGS)
        for name, seed in (("before", 0), ("after", 1), ("oracle", 2))
    }


def test_result_holds_every_set_and_subsamples_identically(results, sets):
    before, after = results["before"], results["after"]
    assert set(after.sets) == {"forget", "retain", "holdout", "utility/world_facts"}
    retain = after.sets["retain"]
    assert retain.n_records == 30 and retain.n_samples == 25
    assert retain.samples["index"] == sorted(set(retain.samples["index"]))
    assert retain.samples["index"] == before.sets["retain"].samples["index"]
    # holdout: no generation, but truth ratios (the verdict compares them with the forget set's)
    assert len(after.sets["holdout"].samples["truth_ratio"]) == after.sets["holdout"].n_samples
    assert "generation" not in after.sets["holdout"].samples
    for column in ("truth_ratio", "generation", "rouge_recall", "mia_min_k_plus_plus"):
        assert len(after.sets["forget"].samples[column]) == 12
    assert after.model_info["parameters"] == sum(
        p.numel() for p in build_model(build_tokenizer()).parameters()
    )


def test_model_utility_is_the_harmonic_mean_of_set_means(results):
    after = results["after"]
    values = []
    for key in ("retain", "utility/world_facts"):
        samples = after.sets[key].samples
        ratios = np.asarray(samples["truth_ratio"])
        values += [
            np.mean(samples["probability"]),
            np.mean(samples["rouge_recall"]),
            np.mean(np.maximum(0, 1 - ratios)),
        ]
    expected = len(values) / sum(1 / v for v in values) if min(values) > 0 else 0.0
    assert after.metrics["model_utility"] == pytest.approx(expected)


def brute_force_auc(members, nonmembers) -> float:
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def test_compare_with_oracle(results):
    before, after, oracle = results["before"], results["after"], results["oracle"]
    comparison = compare(before, after, oracle)
    from scipy import stats

    expected_fq = stats.ks_2samp(
        after.sets["forget"].samples["truth_ratio"], oracle.sets["forget"].samples["truth_ratio"]
    ).pvalue
    assert comparison["forget_quality"] == pytest.approx(expected_fq)
    assert comparison["forget_quality_reason"] is None

    def auc(result):
        return brute_force_auc(
            result.sets["forget"].samples["mia_min_k"], result.sets["holdout"].samples["mia_min_k"]
        )

    assert comparison["mia_auc"]["min_k"] == pytest.approx(auc(after))
    assert comparison["privleak"] == pytest.approx((auc(after) - auc(oracle)) / auc(oracle) * 100)
    assert comparison["models"]["oracle"]["forget_quality"] == 1.0
    for key in ("forget_probability", "retain_probability", "forget_rouge", "extraction_strength"):
        assert comparison[key] == after.metrics[key]
        assert comparison["models"]["before"][key] == before.metrics[key]
    for stratum in comparison["strata"].values():
        if stratum["rows"]:
            assert sum(row["n"] for row in stratum["rows"]) == 12
    # The oracle against itself is indistinguishable from the oracle.
    assert compare(before, oracle, oracle)["forget_quality"] == pytest.approx(1.0)
    assert compare(before, oracle, oracle)["privleak"] == pytest.approx(0.0)


def test_compare_without_oracle_says_why_and_reports_the_rest(results):
    comparison = compare(results["before"], results["after"], None)
    assert comparison["forget_quality"] is None
    assert "oracle" in comparison["forget_quality_reason"]
    assert comparison["privleak"] is None and comparison["privleak_reason"]
    assert comparison["forget_probability"] is not None
    assert comparison["model_utility"] is not None
    assert comparison["mia_auc"] is not None
    assert comparison["models"]["oracle"] is None


def test_oracle_on_another_forget_set_is_refused(tokenizer, sets, spec, results):
    other = EvaluationSets(forget=make_qa_records(12, seed=9, name="other.jsonl"))
    oracle = evaluate_model(build_model(tokenizer, seed=2), tokenizer, other, spec, **EVAL_ARGS)
    comparison = compare(results["before"], results["after"], oracle)
    assert comparison["forget_quality"] is None
    assert "different forget set" in comparison["forget_quality_reason"]
    with pytest.raises(ValueError, match="different forget sets"):
        compare(oracle, results["after"], None)


def test_stored_results_round_trip_through_json(results):
    stored = {
        name: EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict())))
        for name, result in results.items()
    }
    assert stored["oracle"].to_dict() == results["oracle"].to_dict()
    assert compare(stored["before"], stored["after"], stored["oracle"]) == compare(
        results["before"], results["after"], results["oracle"]
    )
    with pytest.raises(ValueError):
        EvaluationResult.from_dict({**results["oracle"].to_dict(), "schema_version": "2.0"})


def test_sets_given_as_a_mapping(tokenizer, spec):
    model = build_model(tokenizer)
    mapping = {"forget": make_qa_records(4, seed=1), "retain": None, "utility": None}
    result = evaluate_model(model, tokenizer, mapping, spec, **EVAL_ARGS)
    assert set(result.sets) == {"forget"}
    assert result.metrics["model_utility"] is None and result.notes
    with pytest.raises(ValueError, match="unknown evaluation sets"):
        evaluate_model(
            model, tokenizer, {"forget": mapping["forget"], "retian": 1}, spec, **EVAL_ARGS
        )


def test_raw_text_forget_set_gets_verbmem_and_knowmem(tokenizer):
    spec = EvaluationSpec(
        batch_size=4, verbmem_prefix_tokens=8, verbmem_max_new_tokens=10, max_new_tokens=8
    )
    sets = EvaluationSets(
        forget=make_text_records(6, seed=1),
        holdout=make_text_records(6, seed=2),
        knowmem_forget=make_qa_records(5, seed=1, name="forget_qa.jsonl"),
        retain=make_qa_records(6, seed=3),
    )
    model = build_model(tokenizer)
    result = evaluate_model(model, tokenizer, sets, spec, **EVAL_ARGS)
    assert 0 <= result.metrics["verbmem"] <= 100
    f1 = result.sets["forget"].samples["verbmem_f1"]
    assert result.metrics["verbmem"] == pytest.approx(100 * np.mean(f1))
    knowmem = result.sets["knowmem_forget"].samples["knowmem_f1"]
    assert result.metrics["knowmem"] == pytest.approx(100 * np.mean(knowmem))
    assert result.metrics["forget_truth_ratio"] is None
    assert result.metrics["mia_auc"] is not None
    comparison = compare(result, result, result)
    assert comparison["forget_quality"] is None
    assert "truth ratios" in comparison["forget_quality_reason"]
    assert comparison["privleak"] == 0.0


# --- the report, against docs/report.md -------------------------------------------------


def documented_fields() -> list[tuple[str, set[str], bool]]:
    """``(path, allowed types, required)`` from every 4-column field table in the doc."""
    rows = []
    for line in (REPO / "docs" / "report.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 4 or cells[2] not in ("yes", "no"):
            continue
        rows.append((cells[0].strip("`"), set(cells[1].split("|")), cells[2] == "yes"))
    return rows


def resolve(document, path: str) -> tuple[list, bool]:
    """Values at ``path`` (``*``: every non-null value of an object, ``[]``: every
    element); and whether some step found its key missing."""
    values, missing = [document], False
    for segment in path.split("."):
        each = segment.endswith("[]")
        key = segment[:-2] if each else segment
        found = []
        for value in values:
            if value is None:  # a nullable parent: nothing below it to check
                continue
            if key == "*":
                found += [v for v in value.values() if v is not None]
            elif key in value:
                found.append(value[key])
            else:
                missing = True
        values = [v for f in found for v in f] if each else found
    return values, missing


def has_type(value, types: set[str]) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "null": lambda v: v is None,
    }
    return any(checks[t](value) for t in types)


def training_rows(steps: int = 12) -> list[dict]:
    return [
        {
            "step": step,
            "epoch": step / 4,
            "values": {
                "loss": 2.0 - 0.1 * step,
                "forget_loss": 1.5 - 0.1 * step,
                "retain_loss": 0.5,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "weight_mean": 0.5 - 0.01 * step,
                "weight_min": 0.1,
                "weight_max": 0.9,
            },
        }
        for step in range(1, steps + 1)
    ]


def test_report_matches_docs_and_renders(tmp_path, results):
    before, after, oracle = results["before"], results["after"], results["oracle"]
    comparison = compare(before, after, oracle)
    relearn = {
        "steps": 5,
        "fraction": 0.5,
        "before_attack": {"forget_probability": 0.1, "forget_rouge": 0.2},
        "after_attack": {"forget_probability": 0.6, "forget_rouge": 0.7},
    }
    job = {"id": "job_123", "method": "simnpo", "model": "demo-target", "hyperparameters": {}}
    written = write_report(
        tmp_path,
        job=job,
        before=before,
        after=after,
        oracle=oracle,
        comparison=comparison,
        training_metrics=training_rows(),
        relearn=relearn,
    )
    assert {"report.json", "report.html", "metrics.png", "truth_ratio.png"} <= set(written)
    assert {"training_loss.png", "gradient_weights.png", "strata.png"} <= set(written)

    report = json.loads((tmp_path / "report.json").read_text())
    fields = documented_fields()
    assert len(fields) > 60, "the field tables of docs/report.md were not found"
    for path, types, required in fields:
        values, missing = resolve(report, path)
        if required:
            assert not missing, f"{path} is documented as required but absent"
        for value in values:
            assert has_type(value, types), f"{path}: {value!r} is not {types}"
    documented = {path for path, _, _ in fields}
    for key in report["summary"]:
        assert f"summary.{key}" in documented or f"summary.{key}.*" in documented
    for key in report:
        assert key in documented
    for column in report["evaluations"]["after"]["sets"]["forget"]["samples"]:
        assert f"evaluations.*.sets.*.samples.{column}" in documented
    assert report["schema_version"] == "1.6"
    # Written without a job verdict, the report falls back to the evidence's.
    verdict = report["summary"]["verdict"]
    assert verdict["status"] in ("forgotten", "not_forgotten", "not_verifiable")
    assert verdict["reason"] and {"forget_quality", "privleak"} <= {
        c["name"] for c in verdict["checks"]
    }
    assert report["evaluations"]["oracle"]["sets"]["forget"]["samples"]["truth_ratio"]
    assert EvaluationResult.from_dict(report["evaluations"]["after"]).to_dict() == after.to_dict()

    page = (tmp_path / "report.html").read_text()
    assert len(page) > 5_000
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    images = re.findall(r"<img src=\"([^\"]+)\"", page)
    assert set(images) == set(report["files"]["plots"].values())
    for name in images:
        assert "/" not in name and (tmp_path / name).exists()
    for name in report["files"]["plots"].values():
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
    assert "Relearning attack" in page and "Forget quality" in page
    # Numbers only: no forget-set text or generated answers in the page.
    assert make_qa_records(12, seed=1).records[0].answer not in page
    for generation in after.sets["forget"].samples["generation"]:
        if len(generation) > 20:
            assert generation not in page


def test_report_with_several_oracles_pools_them_and_keeps_each(
    tmp_path, tokenizer, sets, spec, results
):
    from scipy.stats import ks_2samp

    second = evaluate_model(build_model(tokenizer, seed=3), tokenizer, sets, spec, **EVAL_ARGS)
    before, after, oracle = results["before"], results["after"], results["oracle"]
    comparison = compare(before, after, oracle, more_oracles=[second])
    written = write_report(
        tmp_path,
        job={"id": "job_pooled"},
        before=before,
        after=after,
        oracle=oracle,
        more_oracles=[second],
        comparison=comparison,
        training_metrics=[],
    )
    report = json.loads(written["report.json"].read_text())
    summary, evaluations = report["summary"], report["evaluations"]

    def truth_ratios(evaluation):
        values = evaluation["sets"]["forget"]["samples"]["truth_ratio"]
        return [v for v in values if v is not None]

    # recomputable from the report alone: the model's ratios against both oracles'
    ours = truth_ratios(evaluations["after"])
    first, other = truth_ratios(evaluations["oracle"]), truth_ratios(evaluations["more_oracles"][0])
    assert summary["forget_quality"] == pytest.approx(ks_2samp(ours, first + other).pvalue)
    assert summary["forget_quality_oracles"] == 2
    assert summary["forget_quality_by_oracle"] == pytest.approx(
        [ks_2samp(ours, first).pvalue, ks_2samp(ours, other).pvalue]
    )
    oracle_row = report["comparison"]["models"]["oracle"]
    assert oracle_row["forget_quality"] == pytest.approx(ks_2samp(first, other).pvalue)
    page = written["report.html"].read_text()
    assert f"against {len(first) + len(other)} of 2 oracles pooled" in page


def test_report_without_oracle_or_training(tmp_path, results):
    comparison = compare(results["before"], results["after"], None)
    written = write_report(
        tmp_path,
        job={"id": "job_x"},
        before=results["before"],
        after=results["after"],
        oracle=None,
        comparison=comparison,
        training_metrics=[],
    )
    assert "training_loss.png" not in written
    report = json.loads(written["report.json"].read_text())
    assert report["summary"]["forget_quality"] is None
    assert report["evaluations"]["oracle"] is None and report["relearn"] is None
    assert "not measured" in written["report.html"].read_text()


# --- the demo target against its retrain oracle -----------------------------------------


@pytest.mark.slow
def test_demo_target_vs_retrain_oracle(tiny_demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.data.records import read_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_demo.tokenizer)
    data = tiny_demo.data
    sets = EvaluationSets(
        forget=read_records(data["forget10"]),
        retain=read_records(data["retain90"]),
        holdout=read_records(data["holdout"]),
        utility={"world_facts": read_records(data["world_facts"])},
    )
    spec = EvaluationSpec()
    with torch.inference_mode():
        target = evaluate_model(
            AutoModelForCausalLM.from_pretrained(tiny_demo.target),
            tokenizer,
            sets,
            spec,
            template=DEFAULT_PROMPT_TEMPLATE,
            max_length=128,
        )
        oracle = evaluate_model(
            AutoModelForCausalLM.from_pretrained(tiny_demo.retrain),
            tokenizer,
            sets,
            spec,
            template=DEFAULT_PROMPT_TEMPLATE,
            max_length=128,
        )
    # The target memorized the forget set; the oracle never saw it.
    assert target.metrics["forget_probability"] > 0.9
    assert target.metrics["forget_probability"] > 5 * oracle.metrics["forget_probability"]
    original = compare(target, target, oracle)
    assert original["forget_quality"] < 0.01
    assert compare(target, oracle, oracle)["forget_quality"] == pytest.approx(1.0)
    # Membership inference tells the memorized forget set from unseen holdout authors.
    assert original["mia_auc"]["loss"] > 0.9
    assert original["privleak"] > 0


def test_relearning_attack_brings_back_what_it_trains_on(tiny_demo):
    """The retrain oracle never saw forget10: a relearning attack on half of it raises
    the likelihood of that half, and each before/after pair covers the same samples."""
    from core.data.records import read_records
    from core.evaluation.relearn import relearn_attack
    from core.models.loading import load_model
    from core.spec import DEFAULT_PROMPT_TEMPLATE, EvaluationSpec, RelearnSpec

    model, tokenizer = load_model(str(tiny_demo.retrain), dtype="fp32")
    forget = read_records(tiny_demo.data["forget10"])
    spec = EvaluationSpec(
        generate=False,
        relearn=RelearnSpec(steps=20, fraction=0.5, learning_rate=3e-3, batch_size=4),
    )
    result = relearn_attack(
        model, tokenizer, forget, spec, template=DEFAULT_PROMPT_TEMPLATE, max_length=64
    )
    assert result["relearned_samples"] == result["unseen_samples"] == 8
    before, after = result["before_attack_relearned"], result["after_attack"]
    assert after["forget_probability"] > before["forget_probability"] + 0.2
    assert result["before_attack_unseen"]["forget_probability"] is not None
