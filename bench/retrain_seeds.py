"""What a perfect unlearner scores: retrains of other training seeds against the oracle.

Imported by ``bench/minitofu.py --target --retrains N``. Issue 8's goal asks for oracle
forget quality >= 0.9 (mean over seeds, none below 0.5): a KS p-value between the
unlearned model's forget truth ratios and those of *one* model retrained without the
forget set. A model that forgot perfectly is itself such a retrain, with another training
seed (initialisation and data order); what those score against the benchmark's oracle,
and what the verdict says of them, is the ceiling any method can reach on the same build
and the noise of a single oracle. Each is trained on exactly the oracle's data and recipe
(retain90 and the world facts), only the seed changed, kept beside the build's models
(``retrains/<oracle hash>-seed<N>``, reused), and evaluated as a job's published model is: the full
evaluation against the oracle, the relearning attack, and the final verdict (a job's
also asks two evaluation points in a row, which a model that was not trained has not).
"""

from __future__ import annotations

from pathlib import Path

from core.demo.build import PRESETS, read_training_records, train_demo_model, training_files
from core.evaluation.relearn import relearn_probability, relearning_check_of
from core.evaluation.verdict import final_verdict
from core.models.loading import load_model
from core.spec import DEFAULT_PROMPT_TEMPLATE, TargetSpec

#: training seeds of these retrains sit far from the asset build seeds (0, 1, 2, ...),
#: which are also the oracles' own training seeds
SEED_OFFSET = 1000


def oracle_records(assets) -> list[dict]:
    """What the build's oracle trained on: retain90 and the world facts."""
    return read_training_records(training_files(assets.data)["retrain"])


def retrained(bench, training_seed: int) -> Path:
    """The folder of the build's retrain of ``training_seed``, trained if not there yet;
    named by the oracle's weights too, so that a rebuilt build does not reuse another's."""
    oracle = bench.assets.identity()["retrain_sha256"]
    folder = Path(bench.assets.root) / "retrains" / f"{oracle}-seed{training_seed}"
    if not (folder / "config.json").exists():
        train_demo_model(
            bench.tokenizer,
            oracle_records(bench.assets),
            folder,
            PRESETS[bench.preset],
            seed=training_seed,
        )
    return folder


def retrain_row(bench, seed: int, relearn: dict, max_length: int) -> dict:
    """The retrain of training seed ``SEED_OFFSET + seed``, evaluated as a job's published
    model; its figures (``forget_quality`` against the build's oracle). ``relearn``: the
    attack's ``steps``, ``learning_rate`` and ``batch_size``, as the target jobs get it."""
    model = load_model(str(retrained(bench, SEED_OFFSET + seed)), dtype="fp32")[0]
    result = bench.evaluate(model, f"retrain seed {seed}")
    row = bench.reference_row(result)
    original_utility = bench.reference_row(bench.original)["model_utility"]
    row["model_utility_ratio"] = row["model_utility"] / original_utility
    measured = relearn_probability(
        model,
        bench.tokenizer,
        bench.forget,
        bench.sets.holdout,
        template=DEFAULT_PROMPT_TEMPLATE,
        max_length=max_length,
        fraction=0.5,
        **relearn,
    )
    verdict = final_verdict(
        bench.original, result, target=TargetSpec(), relearning=relearning_check_of(measured)
    )
    checks = {check["name"]: check for check in verdict["checks"]}
    row.update(
        # for forget quality against several oracles (``minitofu.pooled_forget_quality``)
        forget_truth_ratios=result.sets["forget"].samples.get("truth_ratio"),
        seed=seed,
        training_seed=SEED_OFFSET + seed,
        verdict=verdict["status"],
        verdict_reason=verdict["reason"],
        # what the verdict says of perfect forgetting (confirmation aside)
        target_met=verdict["target_met"],
        forgetting_passes=all(
            checks[name]["passed"] for name in ("knowledge", "membership") if name in checks
        ),
        knowledge_p=(checks.get("knowledge") or {}).get("value"),
        membership_auc=(checks.get("membership") or {}).get("value"),
        relearn_ratio=(checks.get("relearning") or {}).get("value"),
    )
    return row
